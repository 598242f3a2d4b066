"""Restarting rollout engines that die or hang, instead of stopping the run.

An engine holds no state but its weights, so one that dies (RoleDiedError) or stops answering
(RoleTimeoutError) is replaced by a new actor in the same bundle, brought to the current weights
version, and the call that failed is repeated (an engine lost while being brought to that version
counts and is replaced the same way). Sampling seeds depend only on (seed, step,
prompt), so the repeated generation draws exactly the samples the first one would have.
The number of restarts per run is bounded by `rollout.max_engine_restarts`; past it (and for
an exception raised inside an engine, which a new engine would raise again) the error stops the
run like any other role's. Trainer roles are never restarted: they hold optimizer state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from rlhf.workers.group import RoleDiedError, RoleTimeoutError, WorkerGroup

log = logging.getLogger(__name__)

T = TypeVar("T")


class EngineRestarter:
    """Runs calls on the rollout engines, restarting the engines a call lost (at most ``max_restarts`` in all)."""

    def __init__(self, engines: WorkerGroup, max_restarts: int):
        self.engines = engines
        self.max_restarts = max_restarts
        self.restarts = 0  # engines restarted so far in this run (metric rollout/engine_restarts)

    def call(self, fn: Callable[[], T], resync: Callable[[], None] | None = None) -> T:
        """``fn()``; when engines die or hang in it, restart them, ``resync()`` (bring every engine to the
        current weights), and call ``fn`` again. An engine lost during the resync (a new engine that dies or
        hangs while loading) counts and is replaced the same way, and the resync repeated."""
        resync_due = False
        while True:
            try:
                if resync_due and resync is not None:
                    resync()
                resync_due = False
                return fn()
            except (RoleDiedError, RoleTimeoutError) as err:
                self._replace(err)
                resync_due = True

    def _replace(self, err: RoleDiedError | RoleTimeoutError) -> None:
        """Restart the engines ``err`` names, or re-raise it past the run's bound."""
        lost = sorted(set(err.actors))
        if not lost or self.restarts + len(lost) > self.max_restarts:
            raise err
        log.warning("%s; restarting rollout engine(s) %s (%d of rollout.max_engine_restarts=%d used)",
                    err, lost, self.restarts + len(lost), self.max_restarts)
        for index in lost:
            self.engines.restart(index)
        self.restarts += len(lost)
