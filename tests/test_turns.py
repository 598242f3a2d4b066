"""Role calls in lanes (rlhf.drivers.turns): side by side, except roles that take turns."""

import pytest

from rlhf.drivers.turns import run_in_lanes


class Recorder:
    """Fake role calls that write what happened, in order, to one event list."""

    def __init__(self):
        self.events: list[str] = []

    def call(self, key: str, fail: bool = False):
        def submit():
            self.events.append(f"submit {key}")
            return self.Pending(self, key, fail)
        return submit

    class Pending:
        def __init__(self, recorder, key, fail):
            self.recorder, self.key, self.fail = recorder, key, fail

        def wait(self):
            self.recorder.events.append(f"wait {self.key}")
            if self.fail:
                raise RuntimeError(f"{self.key} failed")
            return [self.key]


def test_calls_in_one_lane_wait_for_each_other_and_lanes_start_together():
    rec = Recorder()
    results = run_in_lanes({"old": ("turns", rec.call("old")), "ref": ("ref", rec.call("ref")),
                            "values": ("turns", rec.call("values")), "scores": ("turns", rec.call("scores"))})
    assert list(results) == ["old", "ref", "values", "scores"]  # the callers' order
    assert results == {key: [key] for key in ("old", "ref", "values", "scores")}
    # Every lane's first call is in flight before anything is awaited; the lane's next only after the one before it.
    assert rec.events[:2] == ["submit old", "submit ref"]
    for before, after in (("old", "values"), ("values", "scores")):
        assert rec.events.index(f"wait {before}") < rec.events.index(f"submit {after}")


def test_calls_in_their_own_lanes_are_all_in_flight_at_once():
    rec = Recorder()
    run_in_lanes({key: (key, rec.call(key)) for key in ("policy", "critic")})
    assert rec.events == ["submit policy", "submit critic", "wait policy", "wait critic"]


def test_a_failed_call_is_raised():
    rec = Recorder()
    with pytest.raises(RuntimeError, match="critic failed"):
        run_in_lanes({"policy": ("turns", rec.call("policy")), "critic": ("turns", rec.call("critic", fail=True))})
