"""SIGTERM (a preemption) stops a run after the current step with a checkpoint; resume continues it exactly."""

import pytest
from test_fault_matrix import run_cli
from test_ppo_e2e import RESUME_SETTINGS, assert_resumed_like, tiny_overrides

from rlhf.drivers.checkpoint import complete_checkpoints
from rlhf.drivers.metrics import read_metrics

pytestmark = pytest.mark.slow


def test_sigterm_checkpoints_the_step_and_resume_continues(tiny_assets_dir, uninterrupted_tiny_ppo, tmp_path, capsys):
    out = tmp_path / "run"
    # The driver sends itself a real SIGTERM at the start of step 3 (no checkpoint due at step 3).
    sigterm = ["debug.fail_at.role=driver", "debug.fail_at.step=3", "debug.fail_at.method=train_step", "debug.fail_at.mode=sigterm"]
    code, err = run_cli(capsys, *tiny_overrides(tiny_assets_dir, out, *RESUME_SETTINGS, *sigterm))
    assert code == 143, err[-3000:]
    stops = [line for line in err.splitlines() if line.startswith("preempted")]
    assert stops == [(f"preempted (SIGTERM) after step 3; checkpoint {out / 'checkpoints' / 'step_000003'}; "
                    "run again with checkpoint.resume=auto to continue")]
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == ["step_000002", "step_000003"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]

    code, err = run_cli(capsys, *tiny_overrides(tiny_assets_dir, out, *RESUME_SETTINGS))
    assert code == 0, err[-3000:]
    assert_resumed_like(out, uninterrupted_tiny_ppo)
