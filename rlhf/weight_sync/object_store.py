"""Weight sync through Ray's object store: works on any cluster, CPU or GPU, with no rendezvous.

The sender copies each bucket once into the object store as one flat byte buffer (so bfloat16
travels too), all buckets under a single ObjectRef; engines on the same node read them
zero-copy from shared memory, engines on other nodes pull them over Ray's object transfer. The
object lives as long as some handle holding its ref does (Ray's reference counting, with the
trainer process as owner). Every bucket exists at once in the store: for models too large for
that, use the broadcast transport.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

from rlhf.weight_sync.base import SyncHandle, WeightTransport, describe
from rlhf.weight_sync.buckets import BucketedWeights, bucket_nbytes, pack, unpack


class ObjectStoreTransport(WeightTransport):
    name = "object_store"

    def send(self, weights: BucketedWeights, version: int, rank: int = 0) -> SyncHandle | None:
        import ray

        # numpy views of the flat buffers: Ray stores numpy buffers out of band, so ray.get on the
        # same node maps them from shared memory instead of unpickling a copy.
        buffers = [pack(specs, tensors, "cpu").numpy() for specs, tensors in weights if rank == 0]
        if rank != 0:
            return None  # it took part in the gathers
        handle = describe(weights, version, self.name)
        handle.payload = [ray.put(buffers)]
        handle.peak_gathered_bytes = weights.peak_gathered_bytes
        return handle

    def receive(self, handle: SyncHandle) -> Iterable[tuple[str, torch.Tensor]]:
        import ray

        self._check(handle)
        buffers = ray.get(handle.payload[0])
        if [len(b) for b in buffers] != [bucket_nbytes(specs) for specs in handle.buckets]:
            raise ValueError(f"weight sync v{handle.version}: the stored buckets do not match the handle's layout")
        out = []
        with warnings.catch_warnings():
            # The shared-memory buffers are read-only; the engine only copies from them.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for specs, buf in zip(handle.buckets, buffers):
                out.extend(unpack(specs, torch.from_numpy(buf)))
        return out
