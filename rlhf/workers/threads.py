"""Torch's CPU thread count matched to the CPUs Ray gave the actor.

Ray sets OMP_NUM_THREADS to the integer part of an actor's `num_cpus` (at least 1), so an actor
given 1.5 CPUs computes on one thread and leaves half a core idle. A role actor calls
`match_cpu_share()` first thing in its constructor: torch then uses ceil(num_cpus) threads, the
share the placement plan reserved for it (on GPUs the CPU threads only feed the device; the same
rule holds).
"""

from __future__ import annotations

import math

import torch


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
    """Set torch's intra-op threads to ceil(assigned CPUs) (unchanged outside Ray); returns the count used."""
    share = cpu_share()
    if share:
        torch.set_num_threads(max(1, math.ceil(share - 1e-9)))
        print(f"torch threads: {torch.get_num_threads()} for {share:g} CPUs", flush=True)  # in the actor's log
    return torch.get_num_threads()
