"""Reward-model regression on HelpSteer-style scores (algorithm.rm.objective: regression): the loss and
its metrics against hand-computed values, the scored data path, the config checks, --dry-run, and one
short run on Ray in which the MSE drops.

Measured on the 2-core CPU machine: configs/tiny/rm.yaml with algorithm.rm.objective=regression on the
`helpsteer_rows` of the tiny pairs (382 training rows, 60 held out), 44 steps: eval MSE 7.53 -> 0.72,
eval Pearson -0.26 -> 0.87; with algorithm.rm.normalize_targets=true eval MSE (standard units) 1.40 -> 0.34,
Pearson 0.86.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf.algorithms.loss_agg import row_share
from rlhf.algorithms.reward import pearson, pearson_from_moments, regression_loss, score_moments, standardize, target_moments
from rlhf.config import ConfigError, DataConfig, load_config
from rlhf.data.collate import collate_scored
from rlhf.data.datasets import load_scored_dataset
from rlhf.data.errors import DataError
from rlhf.data.examples import ScoredExample
from rlhf.data.formats import detect_format, examples
from test_data_published_formats import HELPSTEER_ROWS, PUBLISHED, Q, dry_run, write_jsonl

# ---- the formulas --------------------------------------------------------------------------------

SCORES, TARGETS = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.0, 2.0, 1.0])


def test_regression_loss_is_the_squared_error_and_its_step_mean_the_mse():
    scores = SCORES.clone().requires_grad_()
    losses = regression_loss(scores, TARGETS)
    assert losses.tolist() == [1.0, 0.0, 9.0]
    mse = row_share(losses, 3)
    assert mse.item() == pytest.approx(10 / 3)
    mse.backward()
    assert scores.grad.tolist() == pytest.approx([2 / 3, 0.0, 2.0])  # 2 (r - t) / N


def test_pearson_from_the_moment_shares_of_micro_batches():
    # r = (1, 2, 4), t = (0, 2, 1): cov 1/3, var r 14/9, var t 2/3 -> rho = sqrt(3/28)
    expected = math.sqrt(3 / 28)
    assert pearson(SCORES, TARGETS) == pytest.approx(expected)
    halves = [score_moments(SCORES[:1], TARGETS[:1], 3), score_moments(SCORES[1:], TARGETS[1:], 3)]
    summed = {key: float(halves[0][key] + halves[1][key]) for key in halves[0]}
    assert pearson_from_moments(summed) == pytest.approx(expected)
    assert pearson(-SCORES, TARGETS) == pytest.approx(-expected)
    assert math.isnan(pearson(torch.ones(3), TARGETS))  # constant scores: no correlation to speak of


def test_target_standardisation():
    mean, std = target_moments(TARGETS)
    assert (mean, std) == pytest.approx((1.0, math.sqrt(2 / 3)))
    assert standardize(TARGETS, mean, std).tolist() == pytest.approx([-math.sqrt(1.5), math.sqrt(1.5), 0.0])
    assert target_moments(torch.tensor([3.0, 3.0])) == (3.0, 1.0)  # nothing to scale


# ---- data and config -----------------------------------------------------------------------------

def test_helpsteer_rows_are_scored_examples_of_the_configured_attribute(tmp_path, tiny_tokenizer):
    assert detect_format(HELPSTEER_ROWS[0], "scored") == "helpsteer"
    assert examples(HELPSTEER_ROWS[1], "helpsteer", "scored", DataConfig()) == [ScoredExample(Q, "7", 4.0)]
    assert examples(HELPSTEER_ROWS[0], "helpsteer", "scored", DataConfig(score_attribute="coherence")) == [
        ScoredExample(Q, "8", 4.0)]
    with pytest.raises(DataError, match="data.score_attribute 'overall_score' is not a HelpSteer attribute"):
        examples(HELPSTEER_ROWS[0], "helpsteer", "scored", DataConfig(score_attribute="overall_score"))
    with pytest.raises(DataError, match="it looks like format 'orca_dpo_pairs', which cannot make scored examples"):
        detect_format(PUBLISHED["orca_dpo_pairs"][1], "scored")

    data = load_scored_dataset(write_jsonl(tmp_path / "h.jsonl", HELPSTEER_ROWS), tiny_tokenizer, DataConfig())
    assert (data.format, len(data)) == ("helpsteer", 2)
    batch = collate_scored(list(data), tiny_tokenizer.pad_token_id)
    assert batch["targets"].tolist() == [1.0, 4.0] and batch["targets"].dtype == torch.float32
    assert tiny_tokenizer.decode(batch["input_ids"][1][batch["loss_mask"][1].bool()]) == "7</s>"


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.rm.objective=regression", "algorithm.rm.margin=0.5"], "algorithm.rm.margin: a Bradley-Terry option"),
    (["algorithm.rm.normalize_targets=true"], "algorithm.rm.normalize_targets: a regression option"),
    (["algorithm.rm.objective=mse"], "algorithm.rm.objective: Input should be 'bradley_terry' or 'regression'"),
])
def test_objective_options_are_checked_at_load(overrides, message):
    base = ["model.policy=p", "data.train=t.jsonl", "algorithm.name=rm", "trainer.micro_batch_size=4",
            "trainer.train_batch_size=4"]
    with pytest.raises(ConfigError, match=f"^<defaults>: {message}"):
        load_config(None, base + overrides, validate_paths=False)


def test_dry_run_of_a_regression_reward_model_reads_scored_rows(tmp_path, tiny_assets, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", HELPSTEER_ROWS)
    data = {"train": str(train), "score_attribute": "correctness"}
    code, out, err = dry_run(tmp_path, tiny_assets, capsys, data, "rm", {"rm": {"objective": "regression"}})
    assert code == 0, err
    assert "format: helpsteer (detected)\n  rows: 2 read, 0 skipped; 2 examples" in out
    assert "⟦8</s>⟧  (score: 0)" in out


def test_eval_refuses_a_regression_eval_of_a_policy_and_a_reward_model_on_unscored_prompts(tiny_assets, capsys):
    from rlhf.eval import main as eval_main

    assert eval_main([tiny_assets["policy"], "--data", tiny_assets["prompts_eval"], "--score-attribute", "helpfulness"]) == 2
    assert "--score-attribute evaluates a reward model, and " in capsys.readouterr().err
    assert eval_main([tiny_assets["reward"], "--data", tiny_assets["prompts_eval"]]) == 2
    assert "or as a regression model on scored rows with --score-attribute" in capsys.readouterr().err


# ---- a short run on Ray ----------------------------------------------------------------------------

def helpsteer_rows(pref_path: str) -> list[dict]:
    """HelpSteer-shaped rows (all five attributes, as published) from the tiny preference pairs: the
    correct sum is helpful (4), a wrong number half so (2), a malformed answer with letters not (0)."""
    rows, seen = [], set()
    for line in open(pref_path):
        pair = json.loads(line)
        for response in (pair["chosen"], pair["rejected"]):
            if (pair["prompt"], response) in seen:
                continue
            seen.add((pair["prompt"], response))
            score = 4 if response == pair["chosen"] else 2 if response.isdigit() else 0
            rows.append({"prompt": pair["prompt"], "response": response, "helpfulness": score, "correctness": score,
                         "coherence": 4, "complexity": 0, "verbosity": 0})
    return rows


@pytest.mark.slow
def test_regression_reward_model_run_lowers_the_mse(ray_session, tiny_assets, tiny_assets_dir, tmp_path):
    from test_dpo_sft_rm import evals, tiny_config

    from rlhf.run import run

    train = write_jsonl(tmp_path / "train.jsonl", helpsteer_rows(tiny_assets["pref_train"]))
    held_out = write_jsonl(tmp_path / "eval.jsonl", helpsteer_rows(tiny_assets["pref_eval"]))
    cfg = tiny_config("rm", tiny_assets_dir, tmp_path / "out", f"data.train={train}", f"data.eval={held_out}",
                      "algorithm.rm.objective=regression", "trainer.max_steps=6", "trainer.warmup_steps=0",
                      "trainer.lr_scheduler=constant", "trainer.eval_interval=0", "checkpoint.interval=0")
    history = run(cfg)["history"]
    for name in ("loss", "pearson", "rewards/mean", "throughput/responses_per_s", "reward/grad_norm"):
        assert all(name in row for row in history[1:]), name
    mse = evals(history, "eval/loss")
    assert [step for step, _ in mse] == [0, 6] and mse[1][1] < 0.5 * mse[0][1], mse
    assert history[-1]["loss"] < history[1]["loss"]
    assert all("eval/pearson" in row for row in history if "eval/loss" in row)

    # rlhf.eval, in this process without Ray, finds the run's final eval MSE and Pearson from the saved model.
    from rlhf.eval import main as eval_main

    report = tmp_path / "eval.json"
    assert eval_main([str(tmp_path / "out"), "--data", str(held_out), "--score-attribute", "helpfulness",
                      "--json", str(report)]) == 0
    metrics = json.loads(report.read_text())["metrics"]
    assert metrics["rm/responses"] == 60
    assert metrics["rm/mse"] == pytest.approx(mse[1][1], rel=1e-4)
    assert metrics["rm/pearson"] == pytest.approx(history[-1]["eval/pearson"], rel=1e-4)
