"""Preemption: SIGTERM (what `ray job stop`, Kubernetes and Slurm send) ends a run at a step boundary, checkpointed.

While a driver runs, `PreemptionGuard` replaces the SIGTERM handler with one that only records the
request; the driver finishes the step in progress, writes a checkpoint unless that step already
has one, and raises `Preempted`, which `rlhf.run` reports as one line and exit code 143 (128 +
SIGTERM, what schedulers expect of a terminated job). Run the same config again with
`checkpoint.resume: auto` to continue exactly where it stopped. A second SIGTERM, or the
scheduler's SIGKILL after its grace period, ends the process at once: give the job a grace period
longer than a step plus a checkpoint (Kubernetes `terminationGracePeriodSeconds`, Slurm `--signal`).
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

EXIT_CODE = 143


class Preempted(RuntimeError):
    """The run stopped on SIGTERM after a complete step and its checkpoint."""


class PreemptionGuard:
    """Records SIGTERM between `install()` and `uninstall()` instead of dying (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        self.requested = True
        log.warning("SIGTERM received: stopping after the current step and its checkpoint (a second SIGTERM stops now)")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
