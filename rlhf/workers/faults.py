"""Deterministic fault injection (config `debug.fail_at`): one actor, or the driver, fails at an exact step.

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
driver: no cleanup, Ray reaps its actors) or sigterm (as a preemption would). A fault fires at
most once per injector (per run).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from rlhf.config import ConfigError, FailAtConfig, _suggest

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
    """Decides which call fails; `fail_at` None means none ever does."""

    def __init__(self, fail_at: FailAtConfig | None):
        self.fail_at = fail_at
        self.step = 0
        self.fired = False

    def _due(self, role: str, actor: int, method: str) -> bool:
        f = self.fail_at
        return (
            f is not None and not self.fired and f.role == role and f.actor == actor and f.step == self.step
            and (f.method is None or f.method == method)
        )

    def describe(self, role: str, actor: int, method: str) -> str:
        return f"injected fault (debug.fail_at): {role} actor {actor} {self.fail_at.mode} in {method} at step {self.step}"

    def actor_fault(self, role: str, actor: int, method: str) -> tuple[str, str] | None:
        """(mode, description) when this call is the chosen one (it then counts as fired), else None."""
        if not self._due(role, actor, method):
            return None
        self.fired = True
        what = self.describe(role, actor, method)
        log.warning("%s", what)
        return self.fail_at.mode, what

    def driver_point(self, method: str) -> None:
        """Called by the driver at its fault points; fails here when this is the chosen one."""
        if not self._due("driver", 0, method):
            return
        self.fired = True
        what = self.describe("driver", 0, method)
        log.warning("%s", what)
        if self.fail_at.mode == "exit":
            os._exit(1)
        if self.fail_at.mode == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise InjectedFault(what)

    def check_methods(self, role: str, actor_cls) -> None:
        """A method name that the role's class lacks would never fire: refuse it (exit 2) before the run."""
        f = self.fail_at
        if f is None or f.role != role or f.method is None:
            return
        cls = getattr(getattr(actor_cls, "__ray_metadata__", None), "modified_class", actor_cls)
        if not callable(getattr(cls, f.method, None)):
            names = [n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))]
            raise ConfigError(
                f"debug.fail_at.method: {role} ({cls.__name__}) has no method {f.method!r}{_suggest(f.method, names)}"
            )
