"""A WorkerGroup: the N Ray actors of one role, called together.

Data parallelism lives here: `scatter` splits a batch along dim 0 across the actors and calls
them concurrently; `setup_distributed` forms the trainers' process group. Every remote call is
awaited through one place, `_wait`, which bounds it by `call_timeout_s` and turns Ray's errors
into errors that name the role, the actor and the method:

    RoleTimeoutError  "<role> did not answer <method> within N s (actors [i, ...] still busy)"
    RoleDiedError     "<role> actor <i> died during <method>: <cause>"
    RoleFailedError   "<role> actor <i> failed in <method>: <ExceptionType>: <message>"

A RoleFailedError keeps Ray's RayTaskError (with the remote traceback) as its __cause__.
Every call is submitted through `_submit`, where an armed `FaultInjector` (debug.fail_at) may
swap the chosen call for a failure inside that actor.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Sequence
from typing import Any

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from rlhf.workers.actor_logs import actor_log_file, with_log_file
from rlhf.workers.faults import FaultInjector, fail_inside_actor


class WorkerError(RuntimeError):
    """A role's actors failed as a group: timed out or died. ``actors``: the indices of the actors at fault."""

    def __init__(self, message: str, actors: Sequence[int] = ()):
        super().__init__(message)
        self.actors = list(actors)


class RoleTimeoutError(WorkerError):
    """An actor did not answer within call_timeout_s."""


class RoleDiedError(WorkerError):
    """An actor process died (crash, OOM kill, node loss) or could not be created."""


class RoleFailedError(WorkerError):
    """An actor method raised an exception."""


def _shardable(value) -> bool:
    return isinstance(value, (torch.Tensor, list, tuple, dict))


def split_evenly(value, n: int) -> list:
    """``value`` cut into n consecutive parts along dim 0, sizes differing by at most one.

    Tensors, lists and tuples are cut; a dict is cut value by value (its non-sequence values
    are repeated in every part).
    """
    if isinstance(value, dict):
        parts = [{} for _ in range(n)]
        for key, item in value.items():
            pieces = split_evenly(item, n) if _shardable(item) else [item] * n
            for part, piece in zip(parts, pieces):
                part[key] = piece
        return parts
    if isinstance(value, torch.Tensor):
        return list(torch.tensor_split(value, n, dim=0))
    if isinstance(value, (list, tuple)):
        size, extra = divmod(len(value), n)
        bounds = [i * size + min(i, extra) for i in range(n + 1)]
        return [value[bounds[i] : bounds[i + 1]] for i in range(n)]
    raise TypeError(f"cannot split a {type(value).__name__} across actors")


class PendingCall:
    """Calls submitted to every actor of a group; `wait()` returns their results in actor order."""

    def __init__(self, group: WorkerGroup, refs: list, method: str, actor_indices: list[int],
                 timeout_s: float | None = None):
        self._group, self._refs, self._method, self._indices = group, refs, method, actor_indices
        self._timeout_s = timeout_s  # None: the group's call_timeout_s

    def wait(self) -> list:
        return self._group._wait(self._refs, self._method, self._indices, self._timeout_s)


class WorkerGroup:
    """``num_actors`` Ray actors of ``actor_cls`` for one role.

    actor_options: Ray options for every actor (a dict) or one dict per actor (a list), e.g.
    num_cpus, num_gpus and a PlacementGroupSchedulingStrategy for its bundle. Alternatively
    ``placement_group`` with ``bundle_indices`` (one per actor) places actor i in bundle
    bundle_indices[i]. Each actor is built as ``actor_cls(*init_args, **init_kwargs)``, plus
    ``index_kwarg=i`` (its index in the group) when ``index_kwarg`` names a keyword;
    ``actor_cls`` is a plain class (wrapped with ray.remote here) or an existing ray.remote class.
    ``faults``: the run's fault injector (debug.fail_at), consulted for every call.
    ``startup_timeout_s`` bounds `wait_ready` and `setup_distributed` (default: call_timeout_s).
    ``log_dir``: actor i's output goes to <log_dir>/<role>-<i>.log instead of Ray's log stream.
    """

    def __init__(
        self,
        actor_cls,
        role: str,
        num_actors: int,
        actor_options: dict | Sequence[dict] | None = None,
        init_args: Sequence[Any] = (),
        init_kwargs: dict | None = None,
        call_timeout_s: float = 600.0,
        placement_group=None,
        bundle_indices: Sequence[int] | None = None,
        index_kwarg: str | None = None,
        faults: FaultInjector | None = None,
        startup_timeout_s: float | None = None,
        log_dir: str | None = None,
    ):
        if num_actors < 1:
            raise ValueError(f"{role}: num_actors must be >= 1, got {num_actors}")
        self.role = role
        self.faults = faults
        if faults is not None:
            faults.check_methods(role, actor_cls)
        self.call_timeout_s = float(call_timeout_s)
        # Constructors and process-group setup load models: they get their own, usually longer, bound.
        self.startup_timeout_s = float(startup_timeout_s) if startup_timeout_s is not None else self.call_timeout_s
        if actor_options is None or isinstance(actor_options, dict):
            per_actor = [dict(actor_options or {}) for _ in range(num_actors)]
        else:
            per_actor = [dict(o) for o in actor_options]
            if len(per_actor) != num_actors:
                raise ValueError(f"{role}: {len(per_actor)} actor_options for {num_actors} actors")
        if placement_group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            indices = list(bundle_indices) if bundle_indices is not None else list(range(num_actors))
            if len(indices) != num_actors:
                raise ValueError(f"{role}: {len(indices)} bundle_indices for {num_actors} actors")
            for opts, index in zip(per_actor, indices):
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=index
                )
        if isinstance(actor_cls, ray.actor.ActorClass):
            self._remote_cls, log_dir = actor_cls, None
        else:
            self._remote_cls = ray.remote(with_log_file(actor_cls) if log_dir is not None else actor_cls)
        self._log_dir, self._index_kwarg = log_dir, index_kwarg
        self._options, self._init_args, self._init_kwargs = per_actor, tuple(init_args), dict(init_kwargs or {})
        self.actors = [self._new_actor(i) for i in range(num_actors)]

    def _new_actor(self, index: int):
        kwargs = dict(self._init_kwargs)
        if self._index_kwarg is not None:
            kwargs[self._index_kwarg] = index
        if self._log_dir is not None:
            kwargs["rlhf_log_file"] = actor_log_file(self._log_dir, self.role, index)
        return self._remote_cls.options(**self._options[index]).remote(*self._init_args, **kwargs)

    def view(self, role: str, role_cls) -> WorkerGroup:
        """These actors addressed as ``role``: for processes that host several roles (`rlhf.workers.scoring`).
        Errors, timeouts and debug.fail_at name ``role``; ``role_cls`` is the role's own class, whose methods a
        fault may name. The actor list is shared, so a restart through one view is seen by the others."""
        if self.faults is not None:
            self.faults.check_methods(role, role_cls)
        view = copy.copy(self)
        view.role = role
        return view

    def __len__(self) -> int:
        return len(self.actors)

    @property
    def num_actors(self) -> int:
        return len(self.actors)

    # -- calls -----------------------------------------------------------------------------------
    def run_all(self, method: str, *args, **kwargs) -> list:
        """The same call on every actor, concurrently; results in actor order."""
        return self.run_all_async(method, *args, **kwargs).wait()

    def _submit(self, index: int, method: str, *args, **kwargs):
        """Submit ``method`` to actor ``index``: the one place calls start, so faults can be injected."""
        fault = self.faults.actor_fault(self.role, index, method) if self.faults is not None else None
        if fault is not None:
            return self.actors[index].__ray_call__.remote(fail_inside_actor, *fault)
        return getattr(self.actors[index], method).remote(*args, **kwargs)

    def run_all_async(self, method: str, *args, **kwargs) -> PendingCall:
        refs = [self._submit(i, method, *args, **kwargs) for i in range(len(self.actors))]
        return PendingCall(self, refs, method, list(range(len(self.actors))))

    def rank0(self, method: str, *args, **kwargs):
        """The call on actor 0 only (under ZeRO-3, methods that gather weights need run_all instead)."""
        return self._wait([self._submit(0, method, *args, **kwargs)], method, [0])[0]

    def scatter(self, method: str, *args, **kwargs) -> list:
        """Split each positional argument along dim 0 across the actors (see `split_evenly`) and call
        them concurrently; keyword arguments go to every actor whole. Results in actor order."""
        return self.scatter_async(method, *args, **kwargs).wait()

    def scatter_async(self, method: str, *args, **kwargs) -> PendingCall:
        n = len(self.actors)
        shards = [split_evenly(arg, n) for arg in args]
        refs = [self._submit(i, method, *[shard[i] for shard in shards], **kwargs) for i in range(n)]
        return PendingCall(self, refs, method, list(range(n)))

    def run_each(self, method: str, args_per_actor: Sequence[Sequence[Any]], **kwargs) -> list:
        """Actor i gets ``method(*args_per_actor[i], **kwargs)``, concurrently; results in actor order."""
        return self.run_each_async(method, args_per_actor, **kwargs).wait()

    def run_each_async(self, method: str, args_per_actor: Sequence[Sequence[Any]], **kwargs) -> PendingCall:
        if len(args_per_actor) != len(self.actors):
            raise ValueError(f"{self.role}: {len(args_per_actor)} argument tuples for {len(self.actors)} actors")
        refs = [self._submit(i, method, *args, **kwargs) for i, args in enumerate(args_per_actor)]
        return PendingCall(self, refs, method, list(range(len(refs))))

    def node_ids(self) -> list[str]:
        """The Ray node id each actor runs on (works for any actor class)."""
        refs = [actor.__ray_call__.remote(_node_id) for actor in self.actors]
        return self._wait(refs, "node_id", list(range(len(refs))))

    @staticmethod
    def gather_cat(results: list):
        """Concatenate per-actor results along dim 0: tensors, lists, or dicts of those (key by key)."""
        first = results[0]
        if isinstance(first, torch.Tensor):
            return torch.cat(results, dim=0)
        if isinstance(first, dict):
            return {key: WorkerGroup.gather_cat([r[key] for r in results]) for key in first}
        if isinstance(first, (list, tuple)):
            return [item for r in results for item in r]
        raise TypeError(f"cannot concatenate results of type {type(first).__name__}")

    # -- process group ------------------------------------------------------------------------------
    def setup_distributed(self, **kwargs) -> None:
        """Rank 0 picks the rendezvous address; then every actor joins (and builds its engine) at once.
        ``kwargs`` go to every actor's ``setup_distributed`` (e.g. a trainer's total_steps)."""
        self.setup_distributed_async(**kwargs).wait()

    def setup_distributed_async(self, **kwargs) -> PendingCall:
        """`setup_distributed` submitted: other roles can build their engines meanwhile; `wait()` bounds it."""
        addr, port = self._wait([self._submit(0, "master_address")], "master_address", [0], self.startup_timeout_s)[0]
        world = len(self.actors)
        refs = [self._submit(rank, "setup_distributed", addr, port, rank, world, **kwargs) for rank in range(world)]
        return PendingCall(self, refs, "setup_distributed", list(range(world)), self.startup_timeout_s)

    def wait_ready(self) -> None:
        """Block until every actor's constructor has finished (raises RoleDiedError if one failed)."""
        refs = [actor.__ray_ready__.remote() for actor in self.actors]
        self._wait(refs, "__init__", list(range(len(refs))), self.startup_timeout_s)

    def restart(self, index: int) -> None:
        """Replace actor ``index`` (dead or hung) by a new one built the same way, in the same bundle; waits until it is ready."""
        ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = self._new_actor(index)
        self._wait([self.actors[index].__ray_ready__.remote()], "__init__", [index], self.startup_timeout_s)

    def kill(self) -> None:
        """End every actor of the group now (no cleanup runs inside them)."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)  # a no-op for an actor that is already dead

    # -- the one place results are awaited -------------------------------------------------------------
    def _wait(self, refs: list, method: str, actor_indices: list[int], timeout_s: float | None = None) -> list:
        """Results of ``refs`` in order, within ``timeout_s`` (default call_timeout_s) in total.

        Refs are collected as they finish, so an actor that died is reported at once even
        while its peers are still busy (often blocked in a collective with it).
        """
        timeout_s = self.call_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        index_of = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        pending = list(refs)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                busy = sorted(actor_indices[index_of[r]] for r in pending)
                raise RoleTimeoutError(
                    f"{self.role} did not answer {method} within {timeout_s:g} s (actors {busy} still busy)", busy
                )
            ready, pending = ray.wait(pending, num_returns=1, timeout=remaining)
            for ref in ready:
                i = index_of[ref]
                try:
                    results[i] = ray.get(ref, timeout=0)
                except RayActorError as exc:
                    raise RoleDiedError(
                        f"{self.role} actor {actor_indices[i]} died during {method}: {_describe(exc)}", [actor_indices[i]]
                    ) from exc
                except RayTaskError as exc:
                    cause = exc.cause if exc.cause is not None else exc
                    raise RoleFailedError(
                        f"{self.role} actor {actor_indices[i]} failed in {method}: {type(cause).__name__}: {cause}",
                        [actor_indices[i]],
                    ) from exc
                except GetTimeoutError:  # pragma: no cover - a ready ref does not time out
                    pending.append(ref)
        return results


def _node_id(_actor) -> str:
    return ray.get_runtime_context().get_node_id()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _describe(exc: BaseException) -> str:
    """Ray's first line (what happened) and, for a failed constructor, the last one (the cause)."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} -> {lines[-1]}"
