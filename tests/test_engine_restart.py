"""A rollout engine that dies or hangs is restarted, re-synced and its call retried: the run finishes as if nothing happened."""

import pytest
from test_fault_matrix import run_cli
from test_ppo_e2e import RESUME_SETTINGS, RESUMED_KEYS, tiny_overrides

from rlhf.drivers.metrics import read_metrics

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode, method", [("exit", "generate"), ("hang", "load_weights")])
def test_lost_engine_is_restarted_and_the_run_matches_an_uninterrupted_one(
    mode, method, tiny_assets_dir, uninterrupted_tiny_ppo, tmp_path, capsys
):
    out = tmp_path / "run"
    fault = ["debug.fail_at.role=rollout", "debug.fail_at.step=3", f"debug.fail_at.method={method}", f"debug.fail_at.mode={mode}"]
    code, err = run_cli(capsys, *tiny_overrides(tiny_assets_dir, out, *RESUME_SETTINGS, "resources.call_timeout_s=20",
                                                "resources.startup_timeout_s=600", "rollout.max_engine_restarts=1", *fault))
    assert code == 0, err[-3000:]
    history = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    assert [r["rollout/engine_restarts"] for r in history] == [0, 0, 1, 1]
    # The retried generation (same seeds) or the repeated sync gives exactly the uninterrupted run.
    for row in history:
        for key in RESUMED_KEYS:
            assert row[key] == pytest.approx(uninterrupted_tiny_ppo[row["step"]][key], rel=1e-4, abs=1e-5), (row["step"], key)
