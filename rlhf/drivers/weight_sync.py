"""Driving the weight sync: the rendezvous before the first step, then one bounded, checked sync per step.

Orchestration only (the bytes move in `rlhf.weight_sync`). Streaming transports (broadcast) need
both sides at once, so the trainer's and the engines' calls are submitted together and the
engines' answers are awaited first: an engine that dies is then reported by name at once, while
the trainer's side is bounded by rollout.sync_timeout_s.
"""

from __future__ import annotations

from rlhf.config import RLHFConfig
from rlhf.weight_sync import TRANSPORTS, SyncHandle
from rlhf.workers.group import WorkerError, WorkerGroup


def engines_share_trainer_gpu(cfg: RLHFConfig) -> bool:
    """resources.colocate puts the policy and the rollout engines on the same bundles (GPUs)."""
    return any("policy" in group and "rollout" in group for group in cfg.resources.colocate)


class WeightSync:
    """The policy group's rank 0 -> every rollout engine, through the resolved rollout.sync_transport."""

    def __init__(self, cfg: RLHFConfig, policy: WorkerGroup, rollout: WorkerGroup):
        self.cfg, self.policy, self.rollout = cfg, policy, rollout
        self.transport = policy.rank0("resolve_sync_transport", engines_share_trainer_gpu(cfg))
        self.streaming = TRANSPORTS[self.transport].streaming

    def setup(self) -> None:
        """Create the transport on every side; a streaming one forms its group (all members at once)."""
        engines = self.rollout.num_actors
        init_kwargs = {}
        if self.streaming:
            addr, port = self.policy.rank0("master_address")
            init_kwargs = {
                "master_address": addr,
                "master_port": port,
                "world_size": 1 + engines * self.cfg.rollout.tensor_parallel_size,
                "timeout_s": self.cfg.rollout.sync_timeout_s,
            }
        trainer = self.policy.run_all_async("init_weight_sync", self.transport, **init_kwargs)
        joining = self.rollout.run_each_async("init_weight_sync", [(self.transport, e) for e in range(engines)], **init_kwargs)
        joining.wait()
        trainer.wait()

    def sync(self, version: int) -> SyncHandle:
        """Send the policy's weights as ``version`` into every engine; returns the trainer's handle."""
        if self.streaming:
            sending = self.policy.run_all_async("publish_weights", version)
            loaded = self.rollout.run_all("load_weights", SyncHandle(version=version, transport=self.transport))
            handles = sending.wait()
        else:
            handles = self.policy.run_all("publish_weights", version)
            loaded = self.rollout.run_all("load_weights", handles[0])
        if any(v != version for v in loaded):
            raise WorkerError(f"rollout engines report versions {loaded} after syncing version {version}")
        return handles[0]
