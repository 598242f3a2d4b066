"""The weight-sync interface: the trainer's rank 0 sends, every rollout engine receives.

The driver never touches tensors. Handle-based transports (object store, CUDA IPC): the policy's
rank 0 publishes (``send``), returns a small picklable `SyncHandle`, and the driver forwards it to
every engine, whose ``receive`` yields ``(hf_name, tensor)`` pairs. Streaming transports
(broadcast): the driver calls ``send`` on the trainer and ``receive`` on every engine at once;
the metadata and the buckets travel over the sync group itself, and the driver only passes each
engine the version it must end up with. Names are Hugging Face parameter names
(``model.layers.0.self_attn.q_proj.weight``), full weights (LoRA merged per bucket by the trainer).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf.weight_sync.buckets import BucketedWeights, TensorSpec


class WeightSyncError(RuntimeError):
    """A weight sync failed or timed out; the message names the role, the version and the bucket."""


@dataclass
class SyncHandle:
    """One sync: its version, transport, bucket layout and (handle-based transports) a payload.

    ``payload`` is transport-specific and kept inside a list: for the object store it is
    ``[ObjectRef]``; Ray resolves only top-level ObjectRef arguments, so a nested one reaches
    the engine as a reference and the engine fetches it itself (from shared memory when local).
    A streaming transport's engines get a handle with only version and transport set.
    """

    version: int
    transport: str
    buckets: list[list[TensorSpec]] = field(default_factory=list)
    payload: list[Any] = field(default_factory=list)
    peak_gathered_bytes: int = 0  # sender side: see `BucketedWeights.peak_gathered_bytes`

    @property
    def specs(self) -> list[TensorSpec]:
        return [s for bucket in self.buckets for s in bucket]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def dtypes(self) -> list[str]:
        return [s.dtype for s in self.specs]

    @property
    def num_tensors(self) -> int:
        return len(self.specs)

    @property
    def total_bytes(self) -> int:
        return sum(s.nbytes for s in self.specs)


def describe(weights: BucketedWeights, version: int, transport: str) -> SyncHandle:
    """A handle with the bucket layout of ``weights`` and an empty payload."""
    return SyncHandle(version=int(version), transport=transport, buckets=[list(b) for b in weights.buckets])


class WeightTransport(ABC):
    """Moves one full set of named weights from the trainer's rank 0 into rollout engines.

    ``send`` runs in the trainer's rank-0 process (on every rank of a ZeRO-3 group, so that all
    take part in the per-bucket gathers; only rank 0 sends), ``receive`` in each engine process
    (inside the vLLM worker that owns the model). Transports that need a rendezvous (broadcast)
    are set up by an ``init(...)`` call on every side at once before the first send.
    """

    name: str
    streaming = False  # True: engines receive while the trainer sends (the driver calls both at once)

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)

    @abstractmethod
    def send(self, weights: BucketedWeights, version: int, rank: int = 0) -> SyncHandle | None:
        """Publish ``weights`` as weight version ``version``; rank 0 returns the handle, other ranks None."""

    @abstractmethod
    def receive(self, handle: SyncHandle) -> Iterable[tuple[str, torch.Tensor]]:
        """The published ``(name, tensor)`` pairs, in bucket order."""

    def close(self) -> None:
        """Release communicators or buffers; the transport is not used afterwards."""

    def _check(self, handle: SyncHandle) -> None:
        if handle.transport != self.name:
            raise ValueError(f"weight sync: a {handle.transport!r} handle given to the {self.name!r} transport")
