"""EngineRestarter's bookkeeping (rlhf/drivers/engine_restart.py) with a recording stand-in for the engine
group; test_engine_restart.py loses real vLLM engines in a real run."""

import pytest

from rlhf.drivers.engine_restart import EngineRestarter
from rlhf.workers.group import RoleDiedError, RoleTimeoutError


class RecordingEngines:
    """Stands in for the rollout WorkerGroup: records which engines were restarted."""

    def __init__(self):
        self.restarted: list[int] = []

    def restart(self, index: int) -> None:
        self.restarted.append(index)


def scripted(events: list, name: str, failures: list):
    """A call that raises the next of ``failures`` (None = succeed), recording ``name`` each time."""
    def call():
        events.append(name)
        failure = failures.pop(0) if failures else None
        if failure is not None:
            raise failure
        return name
    return call


def test_an_engine_lost_in_the_resync_is_replaced_and_the_resync_repeated():
    events, engines = [], RecordingEngines()
    restarter = EngineRestarter(engines, max_restarts=3)
    generate = scripted(events, "generate", [RoleDiedError("rollout actor 1 died during generate", [1])])
    resync = scripted(events, "resync", [RoleTimeoutError("rollout did not answer load_weights", [1])])
    assert restarter.call(generate, resync=resync) == "generate"
    assert events == ["generate", "resync", "resync", "generate"]
    assert engines.restarted == [1, 1] and restarter.restarts == 2


def test_past_the_bound_the_loss_stops_the_run():
    events, engines = [], RecordingEngines()
    restarter = EngineRestarter(engines, max_restarts=1)
    lost_twice = [RoleDiedError("rollout actor 0 died during generate", [0]) for _ in range(2)]
    with pytest.raises(RoleDiedError, match="actor 0 died"):
        restarter.call(scripted(events, "generate", lost_twice), resync=scripted(events, "resync", []))
    assert events == ["generate", "resync", "generate"]
    assert engines.restarted == [0] and restarter.restarts == 1
