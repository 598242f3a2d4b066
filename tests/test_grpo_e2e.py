"""End to end: critic-free online RL (GRPO) on local Ray with the tiny assets and the real vLLM CPU engine."""

import json
from pathlib import Path

import pytest
from test_ppo_e2e import stopped_after, tiny_overrides  # model.critic is set there too; GRPO starts no critic

from rlhf.drivers.checkpoint import read_driver_state
from rlhf.drivers.metrics import read_metrics
from rlhf.run import resolve_config, run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny" / "grpo.yaml")


def test_grpo_learns_without_critic_or_reference(ray_session, tiny_assets_dir, tmp_path):
    out = tmp_path / "grpo"
    result = run(resolve_config(TINY, tiny_overrides(tiny_assets_dir, out, "algorithm.ppo.num_steps=20")))
    history = read_metrics(out / "metrics.jsonl")
    assert [row["step"] for row in history] == list(range(1, 21))
    # kl_coef 0 and log_kl false: no critic and no reference actor, and no KL metric
    assert set(json.loads((out / "placement.json").read_text())) == {"policy", "reward", "rollout"}
    assert all("kl/mean" not in row and "value/loss" not in row for row in history)
    assert max(row["rollout/logprob_diff_max"] for row in history) < 1e-3
    first = sum(r["reward/mean"] for r in history[:3]) / 3
    last = sum(r["reward/mean"] for r in history[-3:]) / 3
    assert last > first + 0.1, (first, last)
    assert sorted(p.name for p in (out / "checkpoints" / "step_000020").iterdir()) == [
        "COMPLETE", "driver_state.json", "policy", "policy_hf"]
    assert "GRPO finished: 20 steps" in (out / "summary.txt").read_text()
    assert result["model"] == str(out / "policy")


def test_grpo_with_dynamic_sampling_resumes_like_an_uninterrupted_run(ray_session, tiny_assets_dir, tmp_path):
    # KL in the reward with an adaptive coefficient and DAPO dynamic sampling: the resumed run must restore
    # the KL controller and the sampler's position after extra sampling rounds. What is resumed is the driver's
    # state, so the rollouts come from the transformers backend (no vLLM start; the learning run above uses vLLM).
    common = ["rollout.backend=hf", "algorithm.ppo.num_steps=4", "checkpoint.interval=2", "algorithm.ppo.eval_interval=0", "algorithm.ppo.kl_coef=0.05",
              "algorithm.ppo.kl_controller=adaptive", "algorithm.ppo.kl_target=0.5", "algorithm.ppo.kl_horizon=200",
              "algorithm.ppo.dynamic_sampling=true", "algorithm.ppo.overlong_buffer=2",
              "model.reward_fn=rlhf.tasks.arithmetic:is_correct"]  # 0/1: most early groups are all 0
    straight = tmp_path / "straight"
    run(resolve_config(TINY, tiny_overrides(tiny_assets_dir, straight, *common)))
    # The same run as it stood right after its step-2 checkpoint, resumed.
    split = stopped_after(straight, 2, tmp_path / "split")
    assert read_driver_state(split / "checkpoints" / "step_000002")["step"] == 2
    run(resolve_config(TINY, tiny_overrides(tiny_assets_dir, split, *common)))

    expected = {r["step"]: r for r in read_metrics(straight / "metrics.jsonl")}
    resumed = {r["step"]: r for r in read_metrics(split / "metrics.jsonl")}
    assert sorted(resumed) == [1, 2, 3, 4]
    assert any(r["sampling/rounds"] > 1 for r in expected.values())  # dynamic sampling drew extra prompts
    for step in (3, 4):
        for key in ("reward/mean", "kl/mean", "kl/coef", "policy/loss", "response/length_mean", "sampling/rounds",
                    "sampling/informative_fraction"):
            assert resumed[step][key] == pytest.approx(expected[step][key], rel=1e-4, abs=1e-5), (step, key)
    assert expected[3]["kl/coef"] != expected[1]["kl/coef"]
