"""Weight sync by NCCL broadcast from the trainer's rank 0 to every engine worker (GPU clusters).

UNTESTED HERE: the development machines and CI have no GPU; only the object-store transport is
exercised by the tests. The group is vLLM's own trainer<->worker rendezvous
(`vllm.distributed.weight_transfer.nccl_common.stateless_init_process_group`, a
StatelessProcessGroup plus PyNcclCommunicator, independent of torch.distributed's default
group), so it coexists with the trainer's DeepSpeed group and vLLM's tensor-parallel group.

Set-up, once: the trainer rank 0 calls ``init(addr, port, rank=0, world_size=1 + n_workers)``
while every engine worker calls ``init(addr, port, rank=1 + i, world_size=...)`` concurrently
(the rendezvous blocks until all have joined). Each sync: ``send`` returns the handle at once
and broadcasts tensor by tensor on a background thread, in the handle's order; each engine
worker's ``receive`` joins those broadcasts in the same order. The trainer calls ``wait()``
before its next optimizer step, since the broadcast reads the live parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from rlhf.weight_sync.base import SyncHandle, WeightTransport, describe, dtype_from_name


class NcclTransport(WeightTransport):
    name = "nccl"

    def __init__(self) -> None:
        self._comm = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weight-sync-nccl")
        self._pending: Future | None = None

    def init(self, master_address: str, master_port: int, rank: int, world_size: int) -> None:
        """Join the sync group: rank 0 is the trainer, ranks 1.. are the engine workers."""
        from vllm.distributed.weight_transfer.nccl_common import (
            stateless_init_process_group,
        )

        self._comm = stateless_init_process_group(
            master_address, master_port, rank, world_size, device=torch.cuda.current_device()
        )

    def send(self, named_tensors: dict[str, torch.Tensor], version: int) -> SyncHandle:
        comm = self._require_group()
        self.wait()
        handle = describe(named_tensors, version, self.name)
        tensors = [t.detach().contiguous() for t in named_tensors.values()]
        if any(not t.is_cuda for t in tensors):
            raise ValueError("nccl weight sync: every tensor must be on a CUDA device")
        device = tensors[0].device

        def broadcast() -> None:
            # Blocks until the engines call receive(), which the driver does after send() returns.
            torch.cuda.set_device(device)
            for t in tensors:
                comm.broadcast(t, src=0, stream=torch.cuda.current_stream())
            torch.cuda.synchronize()

        self._pending = self._thread.submit(broadcast)
        return handle

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def receive(self, handle: SyncHandle) -> Iterable[tuple[str, torch.Tensor]]:
        self._check(handle)
        comm = self._require_group()
        # A generator: every tensor must be consumed, in order, or the sender blocks.
        for name, shape, dtype in zip(handle.names, handle.shapes, handle.dtypes):
            buf = torch.empty(shape, dtype=dtype_from_name(dtype), device="cuda")
            comm.broadcast(buf, src=0, stream=torch.cuda.current_stream())
            yield name, buf

    def close(self) -> None:
        self.wait()
        self._thread.shutdown()
        if self._comm is not None:
            self._comm.destroy()
            self._comm = None

    def _require_group(self):
        if self._comm is None:
            raise RuntimeError("nccl weight sync: call init(master_address, master_port, rank, world_size) on every side first")
        return self._comm
