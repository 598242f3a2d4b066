"""Selecting, splitting and joining batches: dicts whose values are tensors (dim 0 = sample) or lists.

`concat_rollouts` joins batches in the shared layout (prompt left-padded to P, response
right-padded to R; see `padding.py`) whose P and R differ, e.g. the outputs of several
rollout engines, re-padding them to a common width.
"""

from __future__ import annotations

from typing import Any

import torch

Batch = dict[str, Any]


def batch_size(batch: Batch) -> int:
    for value in batch.values():
        if isinstance(value, (torch.Tensor, list, tuple)):
            return len(value)
    raise ValueError("batch holds no tensor or list to take a size from")


def index_batch(batch: Batch, index: torch.Tensor | list[int]) -> Batch:
    """The samples at `index`, in that order."""
    index = torch.as_tensor(index, dtype=torch.long)
    out = {}
    for key, value in batch.items():
        out[key] = value[index] if isinstance(value, torch.Tensor) else [value[i] for i in index.tolist()]
    return out


def split_batch(batch: Batch, size: int) -> list[Batch]:
    """Consecutive micro-batches of at most ``size`` rows (tensors and lists sliced along dim 0)."""
    n = batch_size(batch)
    return [
        {k: v[start : start + size] if isinstance(v, (torch.Tensor, list, tuple)) else v for k, v in batch.items()}
        for start in range(0, n, size)
    ]


def concat_batches(batches: list[Batch]) -> Batch:
    """Join batches of equal widths along dim 0 (tensors) or by concatenation (lists)."""
    out = {}
    for key, first in batches[0].items():
        if isinstance(first, torch.Tensor):
            out[key] = torch.cat([b[key] for b in batches], dim=0)
        else:
            out[key] = [item for b in batches for item in b[key]]
    return out


def _pad_width(t: torch.Tensor, left: int, right: int, value) -> torch.Tensor:
    return torch.nn.functional.pad(t, (left, right), value=value)


def concat_rollouts(batches: list[Batch], pad_id: int) -> Batch:
    """Join rollout batches with different prompt widths P_i and response widths R_i.

    input_ids/attention_mask: prompt part left-padded to max P, response part right-padded to max R;
    other [B, R_i] tensors (response_mask, logprobs) right-padded with 0; everything else concatenated.
    """
    widths = [b["response_mask"].shape[1] for b in batches]
    prompts = [b["input_ids"].shape[1] - r for b, r in zip(batches, widths)]
    max_p, max_r = max(prompts), max(widths)
    padded = []
    for batch, p, r in zip(batches, prompts, widths):
        out = dict(batch)
        for key, fill in (("input_ids", pad_id), ("attention_mask", 0)):
            t = batch[key]
            out[key] = torch.cat([_pad_width(t[:, :p], max_p - p, 0, fill), _pad_width(t[:, p:], 0, max_r - r, fill)], dim=1)
        for key, value in batch.items():
            if key not in ("input_ids", "attention_mask") and isinstance(value, torch.Tensor) and value.dim() == 2:
                out[key] = _pad_width(value, 0, max_r - r, 0)
        padded.append(out)
    return concat_batches(padded)
