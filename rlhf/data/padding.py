"""Padding token sequences into the batch layout every role shares.

Layout: the prompt left-padded to P tokens, then the response right-padded to R tokens, so all
responses start at column P. `response_mask` [B, R] is 1 on generated tokens (EOS included).
"""

from __future__ import annotations

from typing import Sequence

import torch


def pad_sequences(seqs: Sequence[Sequence[int]], pad_value, side: str, length: int | None = None, dtype=torch.long) -> torch.Tensor:
    """Stack variable-length sequences into [B, length], padding on `side` ('left' or 'right')."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    length = max((len(s) for s in seqs), default=0) if length is None else length
    out = torch.full((len(seqs), length), pad_value, dtype=dtype)
    for i, seq in enumerate(seqs):
        seq = torch.as_tensor(list(seq), dtype=dtype)[:length]
        if len(seq):
            if side == "left":
                out[i, length - len(seq):] = seq
            else:
                out[i, : len(seq)] = seq
    return out


def build_sequence_batch(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """{input_ids, attention_mask: [B, P+R], response_mask: [B, R]} from token id lists."""
    prompts = pad_sequences(prompt_ids, pad_id, "left")
    responses = pad_sequences(response_ids, pad_id, "right")
    prompt_mask = pad_sequences([[1] * len(p) for p in prompt_ids], 0, "left", prompts.shape[1])
    response_mask = pad_sequences([[1] * len(r) for r in response_ids], 0, "right", responses.shape[1])
    return {
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": torch.cat([prompt_mask, response_mask], dim=1),
        "response_mask": response_mask.float(),
    }
