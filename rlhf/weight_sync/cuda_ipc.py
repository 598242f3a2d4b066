"""Weight sync by CUDA IPC handles, for engines colocated on the trainer's GPUs (GPU clusters).

UNTESTED HERE: the development machines and CI have no GPU; only the object-store transport is
exercised by the tests. No bytes move: ``send`` exports an IPC handle per tensor
(`torch.multiprocessing.reductions.reduce_tensor`), keyed by the physical GPU's UUID as vLLM's
own IPC engine does, and a worker on that same GPU maps the trainer's memory
(`rebuild_cuda_tensor`) and copies from it while loading. An engine on another GPU finds no
handle for its UUID and gets a clear error: use nccl there.

The exported tensors are kept alive by the sender until the next ``send`` (an IPC handle does
not hold its storage), and the trainer calls ``wait()``, then must not change the weights until
every engine has loaded them: the driver's ``load_weights`` calls return only after the copy.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from rlhf.weight_sync.base import SyncHandle, WeightTransport, describe

# Index of the device index in the argument tuple of rebuild_cuda_tensor (see vLLM's ipc_engine).
_DEVICE_ARG = 6


def _gpu_uuid(device_index: int) -> str:
    return str(torch.cuda.get_device_properties(device_index).uuid)


class CudaIpcTransport(WeightTransport):
    name = "ipc"

    def __init__(self) -> None:
        self._exported: list[torch.Tensor] = []

    def send(self, named_tensors: dict[str, torch.Tensor], version: int) -> SyncHandle:
        from torch.multiprocessing.reductions import reduce_tensor

        handle = describe(named_tensors, version, self.name)
        tensors = [t.detach().contiguous() for t in named_tensors.values()]
        if any(not t.is_cuda for t in tensors):
            raise ValueError("ipc weight sync: every tensor must be on a CUDA device")
        uuid = _gpu_uuid(tensors[0].device.index)
        self._exported = tensors
        handle.payload = [{uuid: reduce_tensor(t)[1]} for t in tensors]
        return handle

    def receive(self, handle: SyncHandle) -> Iterable[tuple[str, torch.Tensor]]:
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        self._check(handle)
        device_index = torch.cuda.current_device()
        uuid = _gpu_uuid(device_index)
        for name, per_gpu in zip(handle.names, handle.payload):
            if uuid not in per_gpu:
                raise ValueError(
                    f"ipc weight sync: this engine's GPU {uuid} holds no exported weights "
                    f"(exported from {list(per_gpu)}); ipc needs the engine colocated with the trainer, else use nccl"
                )
            args = list(per_gpu[uuid])
            args[_DEVICE_ARG] = device_index  # the receiver's index for the same physical GPU
            yield name, rebuild_cuda_tensor(*args)

    def close(self) -> None:
        self._exported = []
