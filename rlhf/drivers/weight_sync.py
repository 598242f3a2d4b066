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


# (transport, how many engine workers are on the policy's GPU) -> why that cannot work.
REFUSED_PLACEMENTS = {
    ("broadcast", "all"): "broadcast (NCCL) cannot put an engine worker on the policy's own GPU; use rollout.sync_transport=ipc",
    ("broadcast", "some"): "some engine workers share the policy's GPU (NCCL refuses two ranks on one GPU); "
                           "use rollout.sync_transport=object_store or place the engines uniformly",
    ("ipc", "some"): "ipc reaches only the engine workers on the policy's GPU; "
                     "use rollout.sync_transport=object_store or place the engines uniformly",
    ("ipc", "none"): "ipc needs the engine workers on the policy's GPU; use rollout.sync_transport=broadcast",
}


def gpu_placement(trainer_gpu: str | None, engine_gpus: list[str | None]) -> str:
    """'all', 'some' or 'none' of the engine workers on the policy rank 0's physical GPU."""
    shared = sum(trainer_gpu is not None and gpu == trainer_gpu for gpu in engine_gpus)
    return "all" if shared == len(engine_gpus) else ("none" if shared == 0 else "some")


class WeightSync:
    """The policy group's rank 0 -> every rollout engine, through the resolved rollout.sync_transport.

    'auto' on GPUs compares physical GPUs (UUIDs): engines on the trainer's GPU get ipc, engines
    elsewhere broadcast; placements no transport can serve are refused up front (REFUSED_PLACEMENTS).
    """

    def __init__(self, cfg: RLHFConfig, policy: WorkerGroup, rollout: WorkerGroup):
        self.cfg, self.policy, self.rollout = cfg, policy, rollout
        trainer_gpu = policy.rank0("sync_device_uuid")
        engine_gpus = [gpu for per_engine in rollout.run_all("sync_device_uuids") for gpu in per_engine]
        placement = gpu_placement(trainer_gpu, engine_gpus) if trainer_gpu is not None else "none"
        self.transport = policy.rank0("resolve_sync_transport", placement == "all")
        refusal = REFUSED_PLACEMENTS.get((self.transport, placement)) if trainer_gpu is not None else None
        if refusal:
            raise WorkerError(f"weight sync: {refusal}")
        self.streaming = TRANSPORTS[self.transport].streaming
        self.engines_asleep = False

    def setup(self) -> None:
        """Create the transport on every side; a streaming one forms its group (all members at once).

        Run it again after replacing an engine: a new group (on a new port) replaces the old one on
        every side, since a broadcast group cannot take in a new member.
        """
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

    def release_engines(self) -> None:
        """After generation: with rollout.sleep_while_training, the engines sleep until the next sync."""
        if self.cfg.rollout.sleep_while_training:
            self.rollout.run_all("sleep")
            self.engines_asleep = True

    def sync(self, version: int) -> SyncHandle:
        """Send the policy's weights as ``version`` into every engine (woken first); returns the trainer's handle."""
        if self.engines_asleep:
            self.rollout.run_all("wake_up")
            self.engines_asleep = False
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
