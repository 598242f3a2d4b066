"""Checkpoint directories: atomic commit, rotation, and what resume picks."""

import pytest

from rlhf.drivers.checkpoint import (
    CheckpointError,
    PendingCheckpoint,
    complete_checkpoints,
    latest_checkpoint,
    read_driver_state,
    resolve_resume,
)


def save(root, step, keep=2):
    pending = PendingCheckpoint(root, step, keep)
    (pending.path / "policy").mkdir()
    (pending.path / "policy" / "weights.bin").write_bytes(b"w%d" % step)
    pending.write_driver_state({"step": step})
    return pending.commit()


def test_commit_rotates_and_keeps_newest(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step)
    names = [p.name for p in complete_checkpoints(tmp_path)]
    assert names == ["step_000002", "step_000003"]
    assert read_driver_state(latest_checkpoint(tmp_path)) == {"step": 3}


def test_interrupted_save_is_invisible_and_previous_intact(tmp_path):
    save(tmp_path, 5)
    pending = PendingCheckpoint(tmp_path, 6, keep=2)  # a save that dies before commit()
    (pending.path / "policy").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_000005"
    assert (latest_checkpoint(tmp_path) / "policy" / "weights.bin").read_bytes() == b"w5"
    # a directory without the marker (e.g. copied by hand, half done) is ignored too
    (tmp_path / "step_000009").mkdir()
    assert resolve_resume("auto", tmp_path).name == "step_000005"


def test_resume_modes(tmp_path):
    assert resolve_resume("auto", tmp_path / "missing") is None
    path = save(tmp_path, 1)
    assert resolve_resume("never", tmp_path) is None
    assert resolve_resume(str(path), tmp_path) == path
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "step_000042"), tmp_path)


def test_resaving_a_step_replaces_it(tmp_path):
    save(tmp_path, 4)
    save(tmp_path, 4)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_000004"]


def test_another_algorithms_checkpoint_is_refused(tmp_path):
    pending = PendingCheckpoint(tmp_path, 1, keep=1)
    pending.write_driver_state({"algorithm": "sft", "step": 1})
    path = pending.commit()
    assert read_driver_state(path, "sft")["step"] == 1
    with pytest.raises(CheckpointError, match="checkpoint of algorithm 'sft', this run is 'ppo'"):
        read_driver_state(path, "ppo")
