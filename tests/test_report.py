"""rlhf.report draws report.png from any run's metrics.jsonl, also a crashed one, with the panels the run has."""

import json

import pytest

from rlhf.report import main

pytest.importorskip("matplotlib")


def write_metrics(run_dir, rows):
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_report_of_a_ppo_run_and_of_a_crashed_sft_run(tmp_path, capsys):
    ppo = tmp_path / "ppo"
    write_metrics(ppo, [{"step": s, "reward/mean": 0.1 * s, "kl/mean": 0.01, "kl/coef": 0.05, "policy/loss": -0.1,
                         "value/loss": 0.2 / s, "rollout/logprob_diff_max": 1e-6, "time/generate": 1.0, "time/train": 2.0}
                        for s in (1, 2, 3)])
    assert main([str(ppo)]) == 0
    assert capsys.readouterr().out.strip() == str(ppo / "report.png")
    # The SFT run crashed after 2 steps and has one panel (losses) where PPO has all five: a fifth of the height.
    sft = tmp_path / "sft"
    write_metrics(sft, [{"step": 0, "eval/loss": 3.0}, {"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0}])
    assert main([str(sft)]) == 0
    (ppo_w, ppo_h), (sft_w, sft_h) = png_size(ppo / "report.png"), png_size(sft / "report.png")
    assert ppo_w == sft_w and ppo_h == 5 * sft_h


def test_report_of_a_dir_without_metrics_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"report error: {tmp_path}: no metrics.jsonl"
