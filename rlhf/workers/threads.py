"""Torch's CPU thread count matched to the CPUs Ray gave the actor.

Ray sets OMP_NUM_THREADS to the integer part of an actor's `num_cpus` (at least 1), so an actor
given 1.5 CPUs computes on one thread and leaves half a core idle. A role actor calls
`match_cpu_share()` first thing in its constructor: torch then uses ceil(num_cpus) threads, the
share the placement plan reserved for it (on GPUs the CPU threads only feed the device; the same
rule holds). An actor whose roles take turns with others on one bundle's CPUs
(`resources.colocate_in_turn`) computes alone while it computes: the driver names the whole
bundle's CPUs in its environment (COMPUTE_CPUS_ENV), and ceil(those) is its thread count.
"""

from __future__ import annotations

import math
import os

import torch

COMPUTE_CPUS_ENV = "RLHF_COMPUTE_CPUS"  # the CPUs an actor computes on, when not its own Ray share


def cpu_share() -> float | None:
    """The CPUs Ray assigned to the calling actor, or None outside a Ray actor."""
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.get_actor_id() is None:
        return None
    return context.get_assigned_resources().get("CPU")


def match_cpu_share() -> int:
    """Set torch's intra-op threads to ceil(assigned CPUs), or ceil(COMPUTE_CPUS_ENV) where the driver set it
    (unchanged outside Ray); returns the count used."""
    named = os.environ.get(COMPUTE_CPUS_ENV)
    share = float(named) if named else cpu_share()
    if share:
        torch.set_num_threads(max(1, math.ceil(share - 1e-9)))
        source = "its bundle's, taking turns" if named else "its own share"
        print(f"torch threads: {torch.get_num_threads()} for {share:g} CPUs ({source})", flush=True)  # the actor's log
    return torch.get_num_threads()
