"""The fault matrix: a role's actor fails (raise / exit / hang) at an exact step of a tiny PPO run.

Each cell runs `python -m rlhf.run` in this process (`rlhf.run.main`, on the session's Ray) with
`debug.fail_at` at step 3 of the 4-step RESUME_SETTINGS run (checkpoint at step 2) and asserts:
exit code 1 within call_timeout_s (hang) or a few seconds (raise, exit) of the fault, one message
naming the role, the actor, the method and the step, and the step-2 checkpoint intact with nothing of
step 3 recorded: exactly the state that test_ppo_e2e's killed driver leaves and then resumes from
(test_engine_restart resumes a preempted run), so a resume per cell would repeat that test for ~30 s each.

Every run costs ~25 s of actor start-up on 2 cores, so by default the matrix runs one cell per role
that together cover every mode, and the cells whose role at fault is not the engine sample with the
transformers backend (no vLLM start); RLHF_FAULT_MATRIX=full runs all 15 (role x mode) cells on vLLM
and resumes each (`resume: auto` must reproduce the uninterrupted run's metrics).
"""

import logging
import os
import time

import pytest
from test_ppo_e2e import RESUME_SETTINGS, TINY, assert_resumed_like, tiny_overrides

from rlhf.drivers.checkpoint import complete_checkpoints, read_driver_state
from rlhf.drivers.metrics import read_metrics
from rlhf.run import main

pytestmark = pytest.mark.slow

CALL_TIMEOUT_S = 10  # what a hang costs (a tiny step's calls take under 1 s); start-up gets its own, longer bound
FAULT_STEP = 3
METHOD = {"policy": "ppo_step", "reference": "logprobs", "reward": "scores", "critic": "value_step", "rollout": "generate"}
ERROR = {  # what the driver reports, after "run failed: step 3: "
    "raise": "{role} actor 0 failed in {method}: InjectedFault: injected fault (debug.fail_at): {role} actor 0 raise in {method} at step 3",
    "exit": "{role} actor 0 died during {method}",
    "hang": "{role} did not answer {method} within 10 s (actors [0] still busy)",
}
DEFAULT_CELLS = [("policy", "raise"), ("reference", "exit"), ("reward", "hang"), ("critic", "exit"), ("rollout", "raise")]
FULL = os.environ.get("RLHF_FAULT_MATRIX") == "full"
CELLS = [(role, mode) for role in METHOD for mode in ERROR] if FULL else DEFAULT_CELLS


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """`python -m rlhf.run TINY args...` in this process: (exit code, stderr)."""
    capsys.readouterr()
    code = main([TINY, *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("role, mode", CELLS, ids=[f"{r}-{m}" for r, m in CELLS])
def test_a_failing_role_stops_the_run_cleanly_at_its_last_checkpoint(
    role, mode, tiny_assets_dir, ray_session, tmp_path, capsys, caplog, request
):
    out = tmp_path / "run"
    # Engine restarts off: here a dead or hung engine must stop the run like any role (test_engine_restart.py
    # covers restarts).
    settings = [*RESUME_SETTINGS, f"resources.call_timeout_s={CALL_TIMEOUT_S}", "resources.startup_timeout_s=600",
                "rollout.max_engine_restarts=0"]
    if role != "rollout" and not FULL:
        settings.append("rollout.backend=hf")  # no vLLM start (~10 s here) where the engine is not the role at fault
    fault = [f"debug.fail_at.role={role}", f"debug.fail_at.step={FAULT_STEP}", f"debug.fail_at.method={METHOD[role]}",
             f"debug.fail_at.mode={mode}"]
    caplog.set_level(logging.WARNING, logger="rlhf.workers.faults")
    code, err = run_cli(capsys, *tiny_overrides(tiny_assets_dir, out, *settings, *fault))
    stopped = time.time()

    assert code == 1, err[-3000:]
    failures = [line for line in err.splitlines() if line.startswith("run failed:")]
    expected = "run failed: step 3: " + ERROR[mode].format(role=role, method=METHOD[role])
    assert len(failures) == 1 and failures[0].startswith(expected), (failures, expected)
    fired = [r for r in caplog.records if r.getMessage().startswith("injected fault")]
    assert len(fired) == 1
    allowed = (CALL_TIMEOUT_S if mode == "hang" else 0) + 10
    assert stopped - fired[0].created < allowed, f"stopped {stopped - fired[0].created:.1f}s after the fault"
    # The last complete checkpoint is intact, nothing of step 3 is recorded.
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == ["step_000002"]
    assert read_driver_state(out / "checkpoints" / "step_000002")["step"] == 2
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]

    if FULL:
        code, err = run_cli(capsys, *tiny_overrides(tiny_assets_dir, out, *settings))
        assert code == 0, err[-3000:]
        assert_resumed_like(out, request.getfixturevalue("uninterrupted_tiny_ppo"))
