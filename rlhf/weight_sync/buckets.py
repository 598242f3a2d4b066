"""The policy's weights cut into buckets of about ``rollout.sync_bucket_mb``, gathered one bucket at a time.

A sync streams the weights in order as flat byte buffers, one per bucket. The plan (which tensor
goes into which bucket, at which byte offset) is made from shapes alone, before anything is
gathered, so it can travel first as metadata. Under ZeRO-3 each bucket's parameters are gathered
together (`deepspeed.zero.GatheredParameters` over that bucket's parameters only) while the bucket
is read, so no rank ever holds more than one bucket of gathered weights. A module larger than a
bucket forms a bucket of its own (a module is never split).

`BucketedWeights.peak_gathered_bytes` measures what the gathers actually materialised: the
largest increase, while a bucket is open, of the bytes held by all of the model's parameters over
what they hold between buckets (ZeRO-3 keeps small parameters resident; those do not count).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from rlhf.models.saving import ExportUnit

# Offsets inside a flat bucket are rounded up to this, so every tensor view is aligned for its dtype.
ALIGN_BYTES = 64


@dataclass(frozen=True)
class TensorSpec:
    """Where one named tensor lives inside its bucket's flat byte buffer."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # a torch dtype name without "torch.", e.g. "bfloat16"
    offset: int
    nbytes: int

    def to_json(self) -> list:
        return [self.name, list(self.shape), self.dtype, self.offset, self.nbytes]

    @classmethod
    def from_json(cls, item: list) -> TensorSpec:
        name, shape, dtype, offset, nbytes = item
        return cls(name, tuple(shape), dtype, int(offset), int(nbytes))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if isinstance(dtype, torch.dtype):
        return dtype
    raise ValueError(f"unknown torch dtype {name!r} in weight-sync metadata")


def bucket_nbytes(specs: list[TensorSpec]) -> int:
    return max((s.offset + s.nbytes for s in specs), default=0)


def _layout(units: list[ExportUnit]) -> list[TensorSpec]:
    specs, offset = [], 0
    for unit in units:
        for name, shape, dtype in unit.specs:
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            specs.append(TensorSpec(name, tuple(shape), dtype_name(dtype), offset, nbytes))
            offset += -(-nbytes // ALIGN_BYTES) * ALIGN_BYTES
    return specs


def plan_buckets(units: list[ExportUnit], bucket_bytes: int) -> list[list[ExportUnit]]:
    """Consecutive units grouped so that each group's bytes stay <= bucket_bytes (a larger unit stands alone)."""
    buckets: list[list[ExportUnit]] = []
    size = 0
    for unit in units:
        if not buckets or size + unit.nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(unit)
        size += unit.nbytes
    return buckets


GatherFn = Callable[[list[nn.Parameter]], contextlib.AbstractContextManager]


class BucketedWeights:
    """Iterating yields ``(specs, {name: tensor})`` per bucket, in plan order, inside that bucket's gather.

    The tensors may alias the live (gathered) parameters: the consumer copies what it keeps before
    asking for the next bucket, and every rank of a ZeRO-3 group must iterate to the end.
    """

    def __init__(
        self,
        units: list[ExportUnit],
        bucket_bytes: int,
        gather: GatherFn | None = None,
        model_params: list[nn.Parameter] | None = None,
    ):
        if bucket_bytes < 1:
            raise ValueError(f"weight sync: bucket size must be positive, got {bucket_bytes} bytes")
        self._groups = plan_buckets(units, bucket_bytes)
        if not self._groups:
            raise ValueError("weight sync: no tensors to send")
        self.buckets = [_layout(group) for group in self._groups]
        self.bucket_bytes = bucket_bytes
        self._gather = gather or (lambda params: contextlib.nullcontext())
        self._model_params = model_params or [p for group in self._groups for u in group for p in u.params]
        self.peak_gathered_bytes = 0

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], bucket_bytes: int) -> BucketedWeights:
        """Plain tensors (no gathering), one unit per tensor: for tests and benchmarks."""
        units = [
            ExportUnit([], [(name, tuple(t.shape), t.dtype)], (lambda name=name, t=t: {name: t.detach()}))
            for name, t in state.items()
        ]
        return cls(units, bucket_bytes)

    @property
    def total_bytes(self) -> int:
        return sum(s.nbytes for bucket in self.buckets for s in bucket)

    def _resident_bytes(self) -> int:
        return sum(p.data.numel() * p.data.element_size() for p in self._model_params)

    def __iter__(self) -> Iterator[tuple[list[TensorSpec], dict[str, torch.Tensor]]]:
        between = self._resident_bytes()
        for group, specs in zip(self._groups, self.buckets):
            with self._gather([p for unit in group for p in unit.params]):
                self.peak_gathered_bytes = max(self.peak_gathered_bytes, self._resident_bytes() - between)
                tensors: dict[str, torch.Tensor] = {}
                for unit in group:
                    tensors.update(unit.read())
                missing = [s.name for s in specs if s.name not in tensors]
                if missing:
                    raise KeyError(f"weight sync: the export produced no tensor for {missing[:3]}")
                yield specs, tensors


def pack(specs: list[TensorSpec], tensors: dict[str, torch.Tensor], device: torch.device | str) -> torch.Tensor:
    """One flat uint8 buffer on ``device`` holding every tensor at its spec's offset (one copy each)."""
    flat = torch.empty(bucket_nbytes(specs), dtype=torch.uint8, device=device)
    for spec in specs:
        src = tensors[spec.name].detach().contiguous().reshape(-1).view(torch.uint8)
        flat[spec.offset : spec.offset + spec.nbytes].copy_(src)
    return flat


def unpack(specs: list[TensorSpec], flat: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """Views of ``flat`` as the named tensors (no copy)."""
    for spec in specs:
        view = flat[spec.offset : spec.offset + spec.nbytes].view(dtype_from_name(spec.dtype))
        yield spec.name, view.reshape(spec.shape)
