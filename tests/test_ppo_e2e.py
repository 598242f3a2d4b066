"""End to end: tiny PPO on local Ray with all five roles as separate actors and the real vLLM CPU engine."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf.drivers.checkpoint import complete_checkpoints
from rlhf.drivers.metrics import read_metrics
from rlhf.run import resolve_config, run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny" / "ppo.yaml")

METRIC_NAMES = [
    "reward/mean", "reward/std", "kl/mean", "kl/coef", "policy/loss", "policy/clipfrac", "policy/approx_kl",
    "policy/entropy", "value/loss", "value/clipfrac", "value/explained_var", "response/length_mean",
    "rollout/logprob_diff_max", "rollout/logprob_diff_mean", "sync/seconds", "sync/version", "time/generate",
    "time/score", "time/train", "time/step", "throughput/tokens_per_s",
]


def tiny_overrides(assets: str, out: Path, *extra: str) -> list[str]:
    root = Path(assets)
    return [
        f"tiny_assets={root}",
        f"model.policy={root / 'policy'}",
        f"model.critic={root / 'critic'}",
        f"data.train={root / 'data' / 'prompts_train.jsonl'}",
        f"data.eval={root / 'data' / 'prompts_eval.jsonl'}",
        f"logging.output_dir={out}",
        "logging.wandb.mode=disabled",
        "logging.progress_bar=false",
        *extra,
    ]


def test_ppo_learns_and_rollout_matches_trainer(ray_session, tiny_assets_dir, tmp_path):
    """PPO learns with its weights broadcast (gloo here, NCCL on GPUs) into two vLLM engines in several
    buckets per step; the rollout logprobs still match the trainer's within 1e-3 (fp32). Every other
    tiny PPO run in the suite syncs through the object store (the CPU default)."""
    out = tmp_path / "run"
    cfg = resolve_config(
        TINY,
        tiny_overrides(tiny_assets_dir, out, "algorithm.ppo.num_steps=14", "checkpoint.interval=7", "algorithm.ppo.eval_interval=7",
                       "rollout.sync_transport=broadcast", "rollout.num_engines=2", "rollout.sync_bucket_mb=0.5"),
    )
    result = run(cfg)
    history = read_metrics(out / "metrics.jsonl")
    assert [row["step"] for row in history] == list(range(1, 15))
    for name in METRIC_NAMES:
        assert all(name in row for row in history), name
    # Every role ran; configs/tiny/ppo.yaml hosts the reference and the reward in one process (test_two_node: apart).
    placement = json.loads((out / "placement.json").read_text())
    assert set(placement) == {"policy", "reference", "reward", "critic", "rollout"}
    # Each actor computes on ceil(its CPU share) torch threads, and says so in its log.
    assert "torch threads: 1 for 0.4 CPUs" in (out / "logs" / "reference+reward-0.log").read_text()
    # The engine sampled with the trainer's weights: fp32 logprobs agree closely, every step.
    assert max(row["rollout/logprob_diff_max"] for row in history) < 1e-3
    assert [row["sync/version"] for row in history] == list(range(1, 15))
    # Learning happens: the rule reward rises clearly.
    first = sum(r["reward/mean"] for r in history[:3]) / 3
    last = sum(r["reward/mean"] for r in history[-3:]) / 3
    assert last > first + 0.1, (first, last)
    # Checkpoints are complete and the saved policy loads with plain transformers.
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == ["step_000007", "step_000014"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "policy")
    assert model.config.num_hidden_layers == 2
    assert result["checkpoint"].endswith("step_000014")


# A 4-step run checkpointed at step 2, with an adaptive KL controller (its state must survive a resume).
RESUME_SETTINGS = ["algorithm.ppo.num_steps=4", "checkpoint.interval=2", "algorithm.ppo.eval_interval=0",
                   "algorithm.ppo.kl_controller=adaptive", "algorithm.ppo.kl_target=0.5", "algorithm.ppo.kl_horizon=200"]
RESUMED_KEYS = ("reward/mean", "kl/mean", "kl/coef", "policy/loss", "value/loss", "response/length_mean")


def stopped_after(run_dir: Path, step: int, copy_dir: Path) -> Path:
    """``copy_dir`` made to hold what ``run_dir`` held when its step-``step`` checkpoint had just been
    completed: that checkpoint and the metrics rows up to it. Resuming there must continue exactly like
    ``run_dir`` did, without a third run that stops at that moment (test_resume_continues_like_an_uninterrupted_run
    stops a real run there with an injected driver fault)."""
    name = f"step_{step:06d}"
    shutil.copytree(run_dir / "checkpoints" / name, copy_dir / "checkpoints" / name)
    rows = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= step]
    (copy_dir / "metrics.jsonl").write_text("".join(f"{line}\n" for line in rows))
    return copy_dir


def assert_resumed_like(resumed_dir: Path, expected: dict[int, dict]) -> None:
    """The resumed run's metrics.jsonl reads as the uninterrupted run: every step once, steps 3-4 equal."""
    resumed = {r["step"]: r for r in read_metrics(resumed_dir / "metrics.jsonl")}
    assert sorted(resumed) == [1, 2, 3, 4]  # no step lost, none logged twice
    for step in (3, 4):
        for key in RESUMED_KEYS:
            assert resumed[step][key] == pytest.approx(expected[step][key], rel=1e-4, abs=1e-5), (step, key)


def test_resume_continues_like_an_uninterrupted_run(ray_session, tiny_assets_dir, uninterrupted_tiny_ppo, tmp_path):
    common = RESUME_SETTINGS

    # The same run in a child process whose driver dies (os._exit, no cleanup, like a SIGKILL) right
    # after its step-2 checkpoint is complete: an injected fault at an exact point, not a poll.
    broken = tmp_path / "broken"
    die = ["debug.fail_at.role=driver", "debug.fail_at.step=2", "debug.fail_at.method=save_checkpoint", "debug.fail_at.mode=exit"]
    args = [sys.executable, "-m", "rlhf.run", TINY, *tiny_overrides(tiny_assets_dir, broken, *common, *die)]
    env = {**os.environ, "RAY_ADDRESS": ray_session}
    proc = subprocess.run(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "injected fault (debug.fail_at): driver actor 0 exit in save_checkpoint at step 2" in proc.stderr
    # A quiet console: the actors' own output (vLLM, DeepSpeed) went to their log files, not to the console.
    console = proc.stdout + proc.stderr
    assert "RolloutEngine" not in console and "vLLM" not in console and "DeepSpeed" not in console, console[-3000:]
    assert "Initializing a V1 LLM engine" in (broken / "logs" / "rollout-0.log").read_text()
    logs = {p.name for p in (broken / "logs").iterdir()}
    assert logs >= {"driver.log", "policy-0.log", "critic-0.log", "reference+reward-0.log"}, logs
    assert not logs & {"reference-0.log", "reward-0.log"}, logs  # one process hosts both (resources.share_scoring_process)
    assert [p.name for p in complete_checkpoints(broken / "checkpoints")] == ["step_000002"]
    assert [r["step"] for r in read_metrics(broken / "metrics.jsonl")] == [1, 2]

    # Resume in this process from the newest complete checkpoint.
    run(resolve_config(TINY, tiny_overrides(tiny_assets_dir, broken, *common)))
    expected = uninterrupted_tiny_ppo
    assert_resumed_like(broken, expected)
    # The adaptive coefficient really moved, so matching it means the controller state was restored.
    assert expected[3]["kl/coef"] != expected[1]["kl/coef"]


def test_resource_shortage_fails_fast_from_the_cli(tiny_assets_dir, tmp_path):
    args = [sys.executable, "-m", "rlhf.run", TINY,
            *tiny_overrides(tiny_assets_dir, tmp_path / "run", "resources.policy.gpus_per_actor=4", "resources.policy.num_actors=2",
                            "trainer.micro_batch_size=8")]
    start = time.time()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": ""})
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "resource error: needs 8 GPU, the cluster has 0" in proc.stderr
    assert "policy" in proc.stderr and "cluster nodes:" in proc.stderr
    assert time.time() - start < 120
