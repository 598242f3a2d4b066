"""Lost rollout engines and a preemption in one tiny PPO run, then a resume: the run ends exactly as if
nothing had happened.

One run carries three injected faults (`debug.fail_at` takes a list; each fires once):
- step 2, the engine's `generate` exits: the engine is restarted, re-synced, and the generation retried;
- step 3 starts, the driver gets SIGTERM (what `ray job stop`, Kubernetes and Slurm send): it finishes
  the step, writes a checkpoint although the interval (2) does not ask for one, and exits 143;
- step 3's weight sync, the engine's `load_weights` hangs past the call timeout: the engine is restarted
  and the sync repeated, so the preempted step still ends complete.
Resuming (`checkpoint.resume=auto`) then runs step 4. The two engine faults and the preemption would
each cost a separate run of ~30 s of actor start-up; together they cost one.
"""

import pytest
from test_fault_matrix import run_cli
from test_ppo_e2e import RESUME_SETTINGS, RESUMED_KEYS, assert_resumed_like, tiny_overrides

from rlhf.drivers.checkpoint import complete_checkpoints
from rlhf.drivers.metrics import read_metrics

pytestmark = pytest.mark.slow

FAULTS = ("debug.fail_at=[{role: rollout, step: 2, method: generate, mode: exit}, "
          "{role: rollout, step: 3, method: load_weights, mode: hang}, "
          "{role: driver, step: 3, method: train_step, mode: sigterm}]")


def test_lost_engines_are_restarted_and_a_preempted_run_resumes_like_an_uninterrupted_one(
    tiny_assets_dir, uninterrupted_tiny_ppo, tmp_path, capsys
):
    out = tmp_path / "run"
    settings = [*RESUME_SETTINGS, "resources.call_timeout_s=10", "resources.startup_timeout_s=600", "rollout.max_engine_restarts=2"]
    code, err = run_cli(capsys, *tiny_overrides(tiny_assets_dir, out, *settings, FAULTS))
    assert code == 143, err[-3000:]
    stops = [line for line in err.splitlines() if line.startswith("preempted")]
    assert stops == [(f"preempted (SIGTERM) after step 3; checkpoint {out / 'checkpoints' / 'step_000003'}; "
                      "run again with checkpoint.resume=auto to continue")]
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == ["step_000002", "step_000003"]
    history = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in history] == [1, 2, 3]
    assert [r["rollout/engine_restarts"] for r in history] == [0, 1, 2]
    # The retried generation (same seeds) and the repeated sync give exactly the uninterrupted run.
    for row in history:
        for key in RESUMED_KEYS:
            assert row[key] == pytest.approx(uninterrupted_tiny_ppo[row["step"]][key], rel=1e-4, abs=1e-5), (row["step"], key)

    code, err = run_cli(capsys, *tiny_overrides(tiny_assets_dir, out, *RESUME_SETTINGS))
    assert code == 0, err[-3000:]
    assert_resumed_like(out, uninterrupted_tiny_ppo)
