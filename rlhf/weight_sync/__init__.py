"""Moving trainer weights into the rollout engines: one interface, several transports."""

from __future__ import annotations

from rlhf.weight_sync.base import SyncHandle, WeightTransport

TRANSPORTS = ("object_store", "nccl", "ipc")


def make_transport(name: str, device: str) -> WeightTransport:
    """The transport called ``name`` ('auto', 'object_store', 'nccl', 'ipc') for ``device`` ('cpu', 'cuda', 'auto').

    'auto' picks the object store on the CPU and NCCL on CUDA. The GPU transports refuse a CPU
    device up front, so a config mistake fails at start-up instead of inside a sync.
    """
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"weight sync: device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    if name == "auto":
        name = "object_store" if device == "cpu" else "nccl"
    if name not in TRANSPORTS:
        raise ValueError(f"weight sync: unknown transport {name!r}; choose one of auto, {', '.join(TRANSPORTS)}")
    if name in ("nccl", "ipc") and device != "cuda":
        raise ValueError(
            f"weight sync: the {name!r} transport needs CUDA devices, but the device is {device!r}; "
            "use rollout.sync_transport=object_store (or auto) on the CPU"
        )
    if name == "object_store":
        from rlhf.weight_sync.object_store import ObjectStoreTransport

        return ObjectStoreTransport()
    if name == "nccl":
        from rlhf.weight_sync.nccl import NcclTransport

        return NcclTransport()
    from rlhf.weight_sync.cuda_ipc import CudaIpcTransport

    return CudaIpcTransport()


__all__ = ["TRANSPORTS", "SyncHandle", "WeightTransport", "make_transport"]
