"""Deterministic fault injection (config `debug.fail_at`): an actor, or the driver, fails at an exact step.

The driver tells the `FaultInjector` which step it is on (`injector.step = n`); a `WorkerGroup`
asks it, for every call it submits, whether this is the chosen call (role, actor, method, step;
no method = the role's first call of that step). The chosen call does not reach the method: the
group runs `fail_inside_actor` in that actor's process instead (through Ray's `__ray_call__`), so
the failure is real for the driver, and the workers know nothing of steps:

    raise  an `InjectedFault` exception inside the actor  -> RoleFailedError
    exit   os._exit(1): the actor process ends at once    -> RoleDiedError
    hang   the call blocks forever                        -> RoleTimeoutError after resources.call_timeout_s

Role `driver` targets the driver process at two points, `train_step` (the start of the step) and
`save_checkpoint` (right after that step's checkpoint is complete): raise, exit (like a killed
driver: no cleanup, Ray reaps its actors) or sigterm (as a preemption would). Each fault of the
list fires at most once per injector (per run), so one run can lose an engine and then be preempted.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from rlhf.config import ConfigError, FailAtConfig, suggest

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """The failure `debug.fail_at` asked for."""


def fail_inside_actor(_actor, mode: str, what: str) -> None:
    """Run in the chosen actor's process in place of the chosen method."""
    if mode == "exit":
        os._exit(1)
    if mode == "hang":
        threading.Event().wait()
    raise InjectedFault(what)


class FaultInjector:
    """Decides which calls fail: each fault of `fail_at` fires once, at its exact call; an empty list, never."""

    def __init__(self, fail_at: list[FailAtConfig]):
        self.fail_at = list(fail_at)
        self.step = 0
        self.fired: set[int] = set()  # indices into fail_at

    def _fire_due(self, role: str, actor: int, method: str) -> FailAtConfig | None:
        """The not yet fired fault chosen for this call, now marked fired; None when there is none."""
        for index, f in enumerate(self.fail_at):
            if (index not in self.fired and f.role == role and f.actor == actor and f.step == self.step
                    and (f.method is None or f.method == method)):
                self.fired.add(index)
                return f
        return None

    def describe(self, fault: FailAtConfig, method: str) -> str:
        return f"injected fault (debug.fail_at): {fault.role} actor {fault.actor} {fault.mode} in {method} at step {self.step}"

    def actor_fault(self, role: str, actor: int, method: str) -> tuple[str, str] | None:
        """(mode, description) when this call is a chosen one (that fault then counts as fired), else None."""
        fault = self._fire_due(role, actor, method)
        if fault is None:
            return None
        what = self.describe(fault, method)
        log.warning("%s", what)
        return fault.mode, what

    def driver_point(self, method: str) -> None:
        """Called by the driver at its fault points; fails here when this is a chosen one."""
        fault = self._fire_due("driver", 0, method)
        if fault is None:
            return
        what = self.describe(fault, method)
        log.warning("%s", what)
        if fault.mode == "exit":
            os._exit(1)
        if fault.mode == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise InjectedFault(what)

    def check_methods(self, role: str, actor_cls) -> None:
        """A method name that the role's class lacks would never fire: refuse it (exit 2) before the run."""
        cls = getattr(getattr(actor_cls, "__ray_metadata__", None), "modified_class", actor_cls)
        for index, f in enumerate(self.fail_at):
            if f.role != role or f.method is None or callable(getattr(cls, f.method, None)):
                continue
            names = [n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))]
            raise ConfigError(
                f"debug.fail_at[{index}].method: {role} ({cls.__name__}) has no method {f.method!r}{suggest(f.method, names)}"
            )
