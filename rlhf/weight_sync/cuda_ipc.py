"""Weight sync by CUDA IPC handles, for engines colocated on the trainer's GPU (GPU clusters).

NOT RUN HERE: the development machines and CI have no GPU (tests/gpu/ covers it where CUDA is
present). No bytes cross a wire: ``send`` packs each bucket into one flat CUDA buffer and exports
an IPC handle for it (`torch.multiprocessing.reductions.reduce_tensor`), keyed by the physical
GPU's UUID as vLLM's own IPC engine does; a worker on that same GPU maps the buffer
(`rebuild_cuda_tensor`) and copies from it while loading. An engine on another GPU finds no
handle for its UUID and gets a clear error: use broadcast there.

The buffers stay alive until the next ``send`` (an IPC handle does not hold its storage). Every
bucket exists at once on the trainer's GPU during a sync (gathered one at a time under ZeRO-3).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from rlhf.weight_sync.base import SyncHandle, WeightTransport, describe
from rlhf.weight_sync.buckets import BucketedWeights, unpack, pack

# Index of the device index in the argument tuple of rebuild_cuda_tensor (see vLLM's ipc_engine).
_DEVICE_ARG = 6


def gpu_uuid() -> str | None:
    """The physical identity of this process's current GPU (None without CUDA): equal UUIDs = the same GPU."""
    if not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)


class CudaIpcTransport(WeightTransport):
    name = "ipc"

    def __init__(self, device: str = "cuda"):
        super().__init__(device)
        if self.device.type != "cuda":
            raise ValueError(f"ipc weight sync needs a CUDA device, got {device!r}")
        self._exported: list[torch.Tensor] = []

    def send(self, weights: BucketedWeights, version: int, rank: int = 0) -> SyncHandle | None:
        from torch.multiprocessing.reductions import reduce_tensor

        device = torch.device("cuda", torch.cuda.current_device())
        flats = [pack(specs, tensors, device) for specs, tensors in weights if rank == 0]
        if rank != 0:
            return None
        torch.cuda.synchronize(device)  # the engines read these buffers from another process
        handle = describe(weights, version, self.name)
        uuid = gpu_uuid()
        self._exported = flats
        handle.payload = [{uuid: reduce_tensor(flat)[1]} for flat in flats]
        handle.peak_gathered_bytes = weights.peak_gathered_bytes
        return handle

    def receive(self, handle: SyncHandle) -> Iterable[tuple[str, torch.Tensor]]:
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        self._check(handle)
        device_index = torch.cuda.current_device()
        uuid = gpu_uuid()
        for specs, per_gpu in zip(handle.buckets, handle.payload):
            if uuid not in per_gpu:
                raise ValueError(
                    f"ipc weight sync v{handle.version}: this engine's GPU {uuid} holds no exported weights "
                    f"(exported from {list(per_gpu)}); ipc needs the engine colocated with the trainer, else use broadcast"
                )
            args = list(per_gpu[uuid])
            args[_DEVICE_ARG] = device_index  # the receiver's index for the same physical GPU
            yield from unpack(specs, rebuild_cuda_tensor(*args))

    def close(self) -> None:
        self._exported = []
