"""The weight-sync interface: the trainer's rank 0 sends, every rollout engine receives.

The driver never touches tensors. It asks the policy's rank 0 to publish (``send``), gets a
small picklable `SyncHandle` back, and forwards that handle to every rollout engine, whose
``receive`` yields ``(hf_name, tensor)`` pairs in the handle's order. Names are Hugging Face
parameter names (``model.layers.0.self_attn.q_proj.weight``), full weights (a LoRA adapter is
merged by the trainer before sending).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SyncHandle:
    """What the driver forwards from the trainer to the engines: metadata plus a transport payload.

    ``payload`` is transport-specific and kept inside a list: for the object store it is
    ``[ObjectRef]``; Ray resolves only top-level ObjectRef arguments, so a nested one reaches
    the engine as a reference and the engine fetches it itself (from shared memory when local).
    """

    version: int
    transport: str
    names: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[str]  # torch dtype names without the "torch." prefix, e.g. "bfloat16"
    total_bytes: int
    payload: list[Any] = field(default_factory=list)

    @property
    def num_tensors(self) -> int:
        return len(self.names)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if isinstance(dtype, torch.dtype):
        return dtype
    raise ValueError(f"unknown torch dtype {name!r} in a weight-sync handle")


def describe(named_tensors: dict[str, torch.Tensor], version: int, transport: str) -> SyncHandle:
    """A handle with the metadata of ``named_tensors`` (in dict order) and an empty payload."""
    if not named_tensors:
        raise ValueError("weight sync: no tensors to send")
    tensors = list(named_tensors.values())
    return SyncHandle(
        version=int(version),
        transport=transport,
        names=list(named_tensors),
        shapes=[tuple(t.shape) for t in tensors],
        dtypes=[dtype_name(t.dtype) for t in tensors],
        total_bytes=sum(t.numel() * t.element_size() for t in tensors),
    )


class WeightTransport(ABC):
    """Moves one full set of named weights from the trainer's rank 0 into rollout engines.

    ``send`` runs in the trainer's rank-0 process, ``receive`` in each engine process (inside
    the vLLM worker that owns the model). Transports that need a rendezvous (NCCL) are set up
    by an ``init(...)`` call on both sides before the first send.
    """

    name: str

    @abstractmethod
    def send(self, named_tensors: dict[str, torch.Tensor], version: int) -> SyncHandle:
        """Publish ``named_tensors`` as weight version ``version``; return the handle for the driver."""

    @abstractmethod
    def receive(self, handle: SyncHandle) -> Iterable[tuple[str, torch.Tensor]]:
        """The published ``(name, tensor)`` pairs, in the handle's order."""

    def wait(self) -> None:
        """Sender side: block until the last send no longer reads the trainer's tensors.

        The trainer must call this before it next changes its weights. Transports whose
        ``send`` copies synchronously (the object store) return at once.
        """

    def close(self) -> None:
        """Release communicators or buffers; the transport is not used afterwards."""

    def _check(self, handle: SyncHandle) -> None:
        if handle.transport != self.name:
            raise ValueError(f"weight sync: a {handle.transport!r} handle given to the {self.name!r} transport")
