"""Weight sync through Ray's object store: works on any cluster, CPU or GPU, with no rendezvous.

The sender copies every tensor once into the object store (as raw bytes, so bfloat16 travels
too) under a single ObjectRef; engines on the same node read it zero-copy from shared memory,
engines on other nodes pull it over Ray's object transfer. The object lives as long as some
handle holding its ref does (Ray's reference counting, with the trainer process as owner).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

from rlhf.weight_sync.base import SyncHandle, WeightTransport, describe, dtype_from_name


class ObjectStoreTransport(WeightTransport):
    name = "object_store"

    def send(self, named_tensors: dict[str, torch.Tensor], version: int) -> SyncHandle:
        import ray

        handle = describe(named_tensors, version, self.name)
        # numpy byte views of the tensors: Ray stores numpy buffers out of band, so ray.get on the
        # same node maps them from shared memory instead of unpickling a copy.
        buffers = [t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy() for t in named_tensors.values()]
        handle.payload = [ray.put(buffers)]
        return handle

    def receive(self, handle: SyncHandle) -> Iterable[tuple[str, torch.Tensor]]:
        import ray

        self._check(handle)
        buffers = ray.get(handle.payload[0])
        if len(buffers) != handle.num_tensors:
            raise ValueError(f"weight sync v{handle.version}: {len(buffers)} buffers for {handle.num_tensors} names")
        out = []
        with warnings.catch_warnings():
            # The shared-memory buffers are read-only; the engine only copies from them.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for name, buf, shape, dtype in zip(handle.names, buffers, handle.shapes, handle.dtypes):
                out.append((name, torch.from_numpy(buf).view(dtype_from_name(dtype)).reshape(shape)))
        return out
