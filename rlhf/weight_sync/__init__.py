"""Moving trainer weights into the rollout engines: one interface, a table of transports.

| transport      | how                                              | where                                   |
|----------------|--------------------------------------------------|-----------------------------------------|
| `broadcast`    | a gloo (CPU) / NCCL (CUDA) group, bucket stream  | engines on other devices or nodes       |
| `ipc`          | CUDA IPC handles of flat buckets                 | engines sharing the trainer's GPU       |
| `object_store` | flat buckets through Ray's object store          | anywhere, no rendezvous                 |
"""

from __future__ import annotations

from rlhf.weight_sync.base import SyncHandle, WeightSyncError, WeightTransport
from rlhf.weight_sync.broadcast import BroadcastTransport
from rlhf.weight_sync.buckets import BucketedWeights
from rlhf.weight_sync.cuda_ipc import CudaIpcTransport, gpu_uuid
from rlhf.weight_sync.object_store import ObjectStoreTransport

TRANSPORTS: dict[str, type[WeightTransport]] = {
    "broadcast": BroadcastTransport,
    "ipc": CudaIpcTransport,
    "object_store": ObjectStoreTransport,
}

# 'auto' on the CPU: the object store. scripts/bench_sync.py (96 MiB fp32, one engine, 2 cores) measured
# 774 MiB/s for it vs 432 MiB/s for gloo broadcast at the default 256 MiB buckets; with 4 MiB buckets
# broadcast reached 801 MiB/s, the object store's best 805 MiB/s (about 20% of a torch memcpy here).
CPU_AUTO = "object_store"


def resolve_transport(name: str, device: str, engines_share_trainer_gpu: bool = False) -> str:
    """The transport 'auto' (or ``name``) means for ``device`` ('cpu' | 'cuda').

    auto: on CUDA, ipc when the engines share the trainer's GPU, else broadcast; on the CPU, CPU_AUTO.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"weight sync: device must be 'cpu' or 'cuda', got {device!r}")
    if name == "auto":
        if device == "cpu":
            return CPU_AUTO
        return "ipc" if engines_share_trainer_gpu else "broadcast"
    if name not in TRANSPORTS:
        raise ValueError(f"weight sync: unknown transport {name!r}; choose one of auto, {', '.join(TRANSPORTS)}")
    if name == "ipc" and device != "cuda":
        raise ValueError("weight sync: the 'ipc' transport needs CUDA devices; on the CPU use broadcast or object_store")
    return name


def make_transport(name: str, device: str) -> WeightTransport:
    """A fresh transport called ``name`` (already resolved, not 'auto') for ``device``."""
    return TRANSPORTS[resolve_transport(name, device)](device)


__all__ = [
    "TRANSPORTS", "BucketedWeights", "gpu_uuid", "SyncHandle", "WeightSyncError", "WeightTransport", "make_transport", "resolve_transport",
]
