"""Role calls the driver submits together, in lanes: side by side, except roles that take turns.

Roles side by side each compute on their own CPU share, so their calls run at the same time. Roles
colocated in turn (`resources.colocate_in_turn`) share their bundle's CPUs in time, each computing
on all of them (`rlhf.workers.threads`): two of them at once would run twice as many threads as
cores and slow each other down, so their calls form one lane, each submitted when the one before it
has finished. Lanes run side by side.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Protocol


class Pending(Protocol):
    def wait(self) -> list: ...


Submit = Callable[[], Pending]  # submits one role call (e.g. `WorkerGroup.scatter_async`)


def run_in_lanes(calls: dict[str, tuple[str, Submit]]) -> dict[str, list]:
    """{key: (lane, submit)} -> {key: the call's results}. Calls of a lane run in the dict's order, one at a time;
    the first call of every lane is submitted before anything is awaited. An error of any call is raised."""
    queues: dict[str, deque[str]] = {}
    for key, (lane, _) in calls.items():
        queues.setdefault(lane, deque()).append(key)
    running = {lane: _submit(calls, queue) for lane, queue in queues.items()}
    results: dict[str, list] = {}
    while running:
        for lane in list(running):
            key, pending = running.pop(lane)
            results[key] = pending.wait()
            if queues[lane]:
                running[lane] = _submit(calls, queues[lane])
    return {key: results[key] for key in calls}


def _submit(calls: dict[str, tuple[str, Submit]], queue: deque[str]) -> tuple[str, Pending]:
    key = queue.popleft()
    return key, calls[key][1]()
