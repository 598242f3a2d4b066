"""Atomic, rotating checkpoint directories and finding the newest complete one.

Layout: <dir>/step_000010/ holds whatever the roles save (DeepSpeed state, Hugging Face models)
plus `driver_state.json` (step, KL controller, data position, RNG state). A checkpoint is written
into <dir>/.partial-step_000010, gets a `COMPLETE` marker last, and only then is renamed into
place, so an interrupted save never looks complete and never touches the previous checkpoint.
The driver process must be able to see the same filesystem as the trainer actors (one machine,
or shared storage on a cluster).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

_STEP_DIR = re.compile(r"^step_(\d+)$")
MARKER = "COMPLETE"


class CheckpointError(ValueError):
    """checkpoint.resume names something that cannot be resumed from."""

DRIVER_STATE = "driver_state.json"


def step_dirname(step: int) -> str:
    return f"step_{step:06d}"


def complete_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / MARKER).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    ckpts = complete_checkpoints(root)
    return ckpts[-1] if ckpts else None


def resolve_resume(resume: str, root: str | os.PathLike) -> Path | None:
    """checkpoint.resume: 'auto' -> newest complete checkpoint or None, 'never' -> None, else that path."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(root)
    path = Path(resume)
    if not (path / MARKER).is_file():
        raise CheckpointError(f"checkpoint.resume: {resume} is not a complete checkpoint (no {MARKER} marker)")
    return path


class PendingCheckpoint:
    """A checkpoint being written: roles save into `.path`; `commit()` makes it visible atomically."""

    def __init__(self, root: str | os.PathLike, step: int, keep: int):
        self.root = Path(root)
        self.step = step
        self.keep = keep
        self.final = self.root / step_dirname(step)
        self.path = self.root / f".partial-{step_dirname(step)}"
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)

    def write_driver_state(self, state: dict) -> None:
        (self.path / DRIVER_STATE).write_text(json.dumps(state, indent=1))

    def commit(self) -> Path:
        (self.path / MARKER).write_text(str(self.step))
        if self.final.exists():  # re-saving the same step (e.g. the final save): replace it whole
            shutil.rmtree(self.final)
        os.replace(self.path, self.final)
        for old in complete_checkpoints(self.root)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return self.final


def read_driver_state(checkpoint: str | os.PathLike, algorithm: str | None = None) -> dict:
    """The driver's state saved with `checkpoint`; with `algorithm`, refuse another algorithm's checkpoint."""
    state = json.loads((Path(checkpoint) / DRIVER_STATE).read_text())
    if algorithm is not None and state.get("algorithm") != algorithm:
        raise CheckpointError(
            f"checkpoint.resume: {checkpoint} is a checkpoint of algorithm {state.get('algorithm')!r}, this run is {algorithm!r}"
        )
    return state
