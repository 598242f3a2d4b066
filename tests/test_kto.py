"""KTO end to end on local Ray with the tiny assets: the preference pairs read as unpaired examples.

The learning itself (held-out exact-match accuracy of the tiny arithmetic task, before and after) is
measured by a script run from the SFT policy (README, KTO); this test catches regressions of the
wiring: the precomputed reference and KL rows line up with the step's, and the implicit rewards move
the right way on held-out data.
"""

from __future__ import annotations

import json

import pytest

from test_dpo_sft_rm import REPO, evals, tiny_config

KTO_STEP_METRICS = [
    "loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
    "time/step", "throughput/examples_per_s", "policy/grad_norm", "policy/lr", "epoch",
]


@pytest.mark.slow
def test_kto_separates_desirable_from_undesirable_on_held_out_data(ray_session, tiny_assets, tiny_assets_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf.drivers.kto import KTODriver

    out = tmp_path / "kto"
    driver = KTODriver(tiny_config("kto", tiny_assets_dir, out, "trainer.max_steps=10", "trainer.eval_interval=5",
                                   "trainer.learning_rate=1e-3"))
    history = driver.run()["history"]
    assert [row["step"] for row in history] == list(range(0, 11))
    for name in KTO_STEP_METRICS:
        assert all(name in row for row in history[1:]), name
    # 320 pairs split into 640 examples; each has its completion's and its mismatched KL row's reference logprobs.
    assert driver.train_ref.shape == (640, 2) and driver.eval_ref.shape == (80, 2)
    assert set(json.loads((out / "placement.json").read_text())) == {"policy"}  # the initial policy precomputed them
    # Before the first update the policy is the reference: every implicit reward, and the KL estimate of the
    # step's mismatched rows against their precomputed reference logprobs, is 0; each loss is its label's
    # weight times 1 - sigmoid(0), and the eval set has as many desirable examples as undesirable ones.
    assert history[1]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert history[1]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    kto = driver.cfg.algorithm.kto
    assert history[0]["eval/loss"] == pytest.approx((kto.desirable_weight + kto.undesirable_weight) / 2 * 0.5, abs=1e-6)
    assert history[0]["eval/kl"] == pytest.approx(0.0, abs=1e-5)
    margins = evals(history, "eval/rewards/margins")
    assert [step for step, _ in margins] == [0, 5, 10]
    assert margins[-1][1] > 0.1, margins  # held out: desirable answers gained on undesirable ones
    assert history[-1]["eval/loss"] < history[0]["eval/loss"] - 0.01
    assert history[-1]["loss"] < history[1]["loss"] and history[-1]["rewards/chosen"] > 0
    assert all(row["kl"] >= 0 for row in history[1:])  # z_ref is clamped at 0
    assert "KTO finished: 10 steps" in (out / "summary.txt").read_text()
    model = AutoModelForCausalLM.from_pretrained(out / "policy")
    assert model.config.vocab_size == AutoModelForCausalLM.from_pretrained(tiny_assets["policy"]).config.vocab_size


def test_tiny_config_dry_run_splits_the_pairs(tiny_assets_dir, capsys):
    from rlhf.run import main

    root = f"{tiny_assets_dir}/data"
    assert main([str(REPO / "configs" / "tiny" / "kto.yaml"), f"tiny_assets={tiny_assets_dir}",
                 f"model.policy={tiny_assets_dir}/policy", f"data.train={root}/pref_train.jsonl",
                 f"data.eval={root}/pref_eval.jsonl", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "rows: 320 read, 0 skipped; 640 examples" in out and "rows: 40 read, 0 skipped; 80 examples" in out
    assert "(label: desirable)" in out and "dry run OK: algorithm kto" in out
