"""Where start-up time goes: the phases from the process's start to the end of the first step.

A run marks each phase as it ends (`StartupClock.mark`): Python and imports (from the process's
start, when the clock starts there, to the driver's modules imported), joining or starting Ray,
the placement groups, the driver reading its data (tokenizer and data) while the roles' actors
start, the rest of the roles' start (actor start-up and model loading not yet done, process
groups, DeepSpeed engines), preparing (resume, `before_training`, the metrics logger) and the first
step. The summary prints one line of them and the first step's metrics row carries
``time/startup`` (process start to the first step's start) and ``time/to_first_step`` (to its end),
so a slow start shows where it went.
"""

from __future__ import annotations

import os
import time


def process_start_time() -> float:
    """When this process started (epoch seconds): the clock's origin for `python -m rlhf.run`."""
    import psutil

    return psutil.Process(os.getpid()).create_time()


class StartupClock:
    """Seconds per named phase since ``origin`` (default: now), in the order they were marked."""

    def __init__(self, origin: float | None = None, first_phase: str = "python"):
        self.origin = time.time() if origin is None else origin
        self.phases: dict[str, float] = {}
        self._last = self.origin
        if origin is not None:
            self.mark(first_phase)  # the time before the clock was made: interpreter start and imports

    def mark(self, phase: str) -> None:
        now = time.time()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self._last
        self._last = now

    def elapsed(self) -> float:
        return time.time() - self.origin

    def summary_line(self) -> str:
        total = sum(self.phases.values())
        parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.phases.items())
        return f"start-up: {total:.1f}s to the end of the first step ({parts})"
