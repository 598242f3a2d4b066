"""Connecting to Ray, planning resource pools for the roles, and checking them before anything starts.

A pool is data: the roles it hosts, how many bundles, and what each bundle holds. Roles named
together in `resources.colocate` share one pool (their per-actor resources add up in each bundle,
so e.g. policy 0.5 GPU + reference 0.5 GPU share one GPU), as do the reference and the reward role
when one process hosts both (`resources.share_scoring_process`); every other role gets a pool of its own.
The plan is checked against the cluster (totals and whether each bundle fits on some node) before
any placement group is created, and placement groups that are not ready within
`resources.placement_timeout_s` are removed and reported: a run never waits forever.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlhf.config import RLHFConfig
from rlhf.registry import get_algorithm

log = logging.getLogger(__name__)


class ResourceError(RuntimeError):
    """The cluster cannot host the plan; the message lists what each role needs and what the cluster has."""


@dataclass
class RoleSpec:
    role: str
    num_actors: int
    cpus: float
    gpus: float


@dataclass
class Pool:
    roles: list[RoleSpec]
    bundles: list[dict[str, float]] = field(default_factory=list)
    pg: object = None

    @property
    def name(self) -> str:
        return "+".join(r.role for r in self.roles)


def connect_ray(cfg: RLHFConfig) -> None:
    """Join the cluster named by resources.ray_address or RAY_ADDRESS (a Ray job sets it); else start a local one."""
    if ray.is_initialized():
        return
    address = cfg.resources.ray_address or os.environ.get("RAY_ADDRESS")
    # Quiet console (rlhf.drivers.console): the actors' lines stay in their log files, Ray's own show warnings only.
    verbose = cfg.logging.verbose
    ray_logging = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    if address:
        log.info("connecting to Ray cluster at %s", address)
        ray.init(address=address, **ray_logging)
    else:
        log.info("no RAY_ADDRESS: joining a Ray cluster started on this machine, or starting a local one")
        ray.init(include_dashboard=False, **ray_logging)


def active_roles(cfg: RLHFConfig) -> list[str]:
    """The roles the configured algorithm runs as separate actors (its registry entry says which)."""
    return get_algorithm(cfg.algorithm.name).roles(cfg)


def role_specs(cfg: RLHFConfig) -> dict[str, RoleSpec]:
    specs = {}
    for role in active_roles(cfg):
        res = getattr(cfg.resources, role)
        num = cfg.rollout.num_engines if role == "rollout" else res.num_actors
        gpus = res.gpus_per_actor
        if role == "rollout" and cfg.rollout.tensor_parallel_size > 1:
            gpus = max(gpus, float(cfg.rollout.tensor_parallel_size))
        specs[role] = RoleSpec(role, num, res.cpus_per_actor, gpus)
    return specs


def plan_pools(cfg: RLHFConfig) -> dict[str, Pool]:
    """role -> the pool it lives in (colocated roles map to the same Pool)."""
    specs = role_specs(cfg)
    by_role: dict[str, Pool] = {}
    groups = [[r for r in group if r in specs] for group in cfg.resources.colocate]
    if cfg.resources.share_scoring_process and not any({"reference", "reward"} <= set(g) for g in groups):
        groups.append([r for r in ("reference", "reward") if r in specs])  # one process hosts both: one pool
    for group in groups:
        if not group or any(r in by_role for r in group):
            continue
        pool = Pool([specs[r] for r in group])
        for r in group:
            by_role[r] = pool
    for role, spec in specs.items():
        if role not in by_role:
            by_role[role] = Pool([spec])
    for pool in _unique(by_role.values()):
        size = max(r.num_actors for r in pool.roles)
        for i in range(size):
            members = [r for r in pool.roles if r.num_actors > i]
            bundle = {"CPU": resource_sum(r.cpus for r in members)}
            gpus = resource_sum(r.gpus for r in members)
            if gpus:
                bundle["GPU"] = gpus
            pool.bundles.append(bundle)
    return by_role


def resource_sum(amounts) -> float:
    """The sum of resource amounts in Ray's units of 1e-4: a float sum such as 1.2 + 4 x 0.2 = 1.9999999999999998
    would make a bundle that Ray cuts to 1.9999, 0.0001 short of the actors it is for (the last one never starts)."""
    return round(sum(amounts), 4)


def _unique(pools) -> list[Pool]:
    seen, out = set(), []
    for pool in pools:
        if id(pool) not in seen:
            seen.add(id(pool))
            out.append(pool)
    return out


def describe_plan(pools: dict[str, Pool], nodes: list[dict]) -> str:
    lines = ["role        actors  CPU/actor  GPU/actor  pool"]
    for role, pool in pools.items():
        spec = next(r for r in pool.roles if r.role == role)
        lines.append(f"{role:<11} {spec.num_actors:>6}  {spec.cpus:>9g}  {spec.gpus:>9g}  {pool.name}")
    need_cpu = sum(b.get("CPU", 0) for p in _unique(pools.values()) for b in p.bundles)
    need_gpu = sum(b.get("GPU", 0) for p in _unique(pools.values()) for b in p.bundles)
    lines.append(f"needed in total: {need_cpu:g} CPU, {need_gpu:g} GPU")
    lines.append("cluster nodes:")
    for node in nodes:
        res = node["Resources"]
        lines.append(f"  {node['NodeManagerAddress']} ({node['NodeID'][:8]}): {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU")
    return "\n".join(lines)


def check_resources(pools: dict[str, Pool]) -> None:
    """Raise ResourceError unless the cluster has the totals and every bundle fits on some node."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    totals = {"CPU": 0.0, "GPU": 0.0}
    for node in nodes:
        for key in totals:
            totals[key] += node["Resources"].get(key, 0.0)
    problems = []
    unique = _unique(pools.values())
    for key in totals:
        need = sum(b.get(key, 0.0) for p in unique for b in p.bundles)
        if need > totals[key] + 1e-9:
            problems.append(f"needs {need:g} {key}, the cluster has {totals[key]:g}")
    for pool in unique:
        for bundle in pool.bundles:
            if not any(all(n["Resources"].get(k, 0.0) + 1e-9 >= v for k, v in bundle.items()) for n in nodes):
                problems.append(f"pool {pool.name}: no node can hold a bundle of {bundle}")
                break
    if problems:
        raise ResourceError("; ".join(problems) + "\n" + describe_plan(pools, nodes))


def create_placement_groups(pools: dict[str, Pool], timeout_s: float) -> None:
    """Create one placement group per pool and wait at most timeout_s for all of them."""
    unique = _unique(pools.values())
    for pool in unique:
        pool.pg = placement_group(pool.bundles, strategy="PACK", name=f"rlhf-{pool.name}")
    pending = {pool.pg.ready(): pool for pool in unique}
    ready, not_ready = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
    if not_ready:
        names = ", ".join(pending[ref].name for ref in not_ready)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        remove_placement_groups(pools)
        raise ResourceError(
            f"placement groups for {names} not ready after {timeout_s:g}s "
            f"(resources.placement_timeout_s)\n{describe_plan(pools, nodes)}"
        )


def remove_placement_groups(pools: dict[str, Pool]) -> None:
    for pool in _unique(pools.values()):
        if pool.pg is not None:
            remove_placement_group(pool.pg)
            pool.pg = None


def release(groups: list, pools: dict[str, Pool]) -> None:
    """Kill a run's actors and remove its placement groups."""
    for group in groups:
        group.kill()
    remove_placement_groups(pools)


def write_placement(groups: list, out_dir) -> None:
    """<out_dir>/placement.json: role -> the node id of each of its actors."""
    import json
    from pathlib import Path

    placement = {group.role: group.node_ids() for group in groups}
    (Path(out_dir) / "placement.json").write_text(json.dumps(placement, indent=1))


def actor_options(pools: dict[str, Pool], roles: list[str], index: int) -> dict:
    """Ray actor options placing actor `index` of ``roles`` (one role, or the roles one process hosts, all in one
    pool) in their pool's bundle `index`, with the sum of those roles' resources."""
    pool = pools[roles[0]]
    specs = [r for r in pool.roles if r.role in roles]
    options = {
        "num_cpus": resource_sum(s.cpus for s in specs),
        "num_gpus": resource_sum(s.gpus for s in specs),
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pool.pg, placement_group_bundle_index=index
        ),
    }
    return options


def prepare_placement(cfg: RLHFConfig) -> dict[str, Pool]:
    """Plan, check and create the placement groups for this run."""
    pools = plan_pools(cfg)
    check_resources(pools)
    create_placement_groups(pools, cfg.resources.placement_timeout_s)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    log.info("placement plan:\n%s", describe_plan(pools, nodes))
    return pools
