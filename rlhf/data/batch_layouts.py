"""The padding layouts of trainer batches: each row's real length per padded part, and cutting a micro-batch
down to the columns its rows need.

| layout    | keys                                          | padded parts                     | seqs/row |
|-----------|-----------------------------------------------|----------------------------------|----------|
| rollout   | input_ids, attention_mask [B, P+R],           | prompt (left-padded to P),       | 1        |
|           | response_mask [B, R] (`padding.py`)           | response (right-padded to R)     |          |
| pairs     | chosen_/rejected_ input_ids, attention_mask   | one shared right-padded width T  | 2        |
|           | [B, T] (`collate.collate_preference`)         |                                  |          |
| sequences | input_ids, attention_mask [B, T]              | one right-padded width T         | 1        |
|           | (`collate.collate_sft`)                       |                                  |          |

A batch's keys name its layout (the first row of the table whose keys it has), and its attention
masks must be exactly that padding (each part's real tokens contiguous against the part's inner
edge); a batch that fits none (other keys, another padding) is UNTRIMMED: its rows are grouped by
count under the budget and every column is kept.

Trimming drops columns that are padding in every row of the micro-batch: the prompt's leading
columns and the response's (or sequence's) trailing ones. It is safe because the forward passes
(`rlhf.models.forward`) take position ids from the attention mask, read responses at the last R
columns and scores at the last real token, and because every tensor aligned with a padded part is
cut with it: in a rollout, tensors [B, P+R, ...] like input_ids and [B, R, ...] like response_mask
(rewards, logprobs, advantages); in the others every tensor [B, T, ...]. Tensors of any other width
(and 1-D ones) are kept whole. Per-token outputs of a trimmed rollout ([b, R'] aligned with the
response) are padded back to R with zeros by `untrim_output`; outputs of the full-sequence layouts
are per row (sequence logprobs, scores) and need nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhf.data.batch_ops import Batch, index_batch


def _right_extent(mask: torch.Tensor) -> torch.Tensor | None:
    """[B] real tokens per row of a right-padded mask, or None when the mask is not right-padded."""
    counts = mask.bool().sum(-1)
    expected = torch.arange(mask.shape[-1]) < counts[:, None]
    return counts if torch.equal(mask.bool(), expected) else None


def _left_extent(mask: torch.Tensor) -> torch.Tensor | None:
    """[B] real tokens per row of a left-padded mask, or None when the mask is not left-padded."""
    return _right_extent(mask.flip(-1))


def _cut(batch: Batch, keep: dict[int, slice]) -> Batch:
    """Every tensor of dim >= 2 whose dim 1 is a width in ``keep`` sliced along dim 1 by that width's slice."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] in keep:
            value = value[:, keep[value.shape[1]]]
        out[key] = value
    return out


# -- rollout: prompt left-padded to P, response right-padded to R ---------------------------------


def _rollout_extents(batch: Batch) -> torch.Tensor | None:
    mask = batch["attention_mask"]
    response_width = batch["response_mask"].shape[1]
    prompt_width = mask.shape[1] - response_width
    prompt = _left_extent(mask[:, :prompt_width])
    response = _right_extent(mask[:, prompt_width:])
    if prompt is None or response is None or prompt_width < 1:
        return None
    if (batch["response_mask"].bool() & ~mask[:, prompt_width:].bool()).any():
        return None  # a response token outside the attention mask: not this layout
    return torch.stack([prompt, response], dim=1)


def _rollout_trim(batch: Batch, widths: list[int]) -> Batch:
    prompt, response = widths
    full = batch["input_ids"].shape[1]
    response_width = batch["response_mask"].shape[1]
    prompt_width = full - response_width
    return _cut(batch, {full: slice(prompt_width - prompt, prompt_width + response), response_width: slice(0, response)})


# -- right-padded full sequences: SFT rows, preference pairs --------------------------------------


def _sequence_extents(batch: Batch) -> torch.Tensor | None:
    extent = _right_extent(batch["attention_mask"])
    return None if extent is None else extent[:, None]


def _pair_extents(batch: Batch) -> torch.Tensor | None:
    chosen = _right_extent(batch["chosen_attention_mask"])
    rejected = _right_extent(batch["rejected_attention_mask"])
    if chosen is None or rejected is None:
        return None
    return torch.maximum(chosen, rejected)[:, None]


def _right_trim(mask_key: str) -> Callable[[Batch, list[int]], Batch]:
    def trim(batch: Batch, widths: list[int]) -> Batch:
        return _cut(batch, {batch[mask_key].shape[1]: slice(0, widths[0])})

    return trim


def _whole_width_extents(batch: Batch) -> torch.Tensor:
    """Every row as wide as the batch's widest tensor: grouping such rows is by count alone."""
    widths = [v.shape[1] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() >= 2]
    rows = next(len(v) for v in batch.values() if isinstance(v, (torch.Tensor, list, tuple)))
    return torch.full((rows, 1), max(widths, default=1), dtype=torch.long)


def _keep_columns(batch: Batch, widths: list[int]) -> Batch:
    return batch


@dataclass(frozen=True)
class Layout:
    """extents(batch) -> [B, parts] real length of each row in each padded part (None: the masks are not this layout);
    trim(batch, widths) -> the batch cut to ``widths`` columns per part; output_key: the tensor whose columns
    per-token outputs are aligned with (None: outputs are per row)."""

    name: str
    keys: tuple[str, ...]
    extents: Callable[[Batch], torch.Tensor | None]
    trim: Callable[[Batch, list[int]], Batch]
    sequences_per_row: int
    output_key: str | None = None


UNTRIMMED = Layout("untrimmed", (), _whole_width_extents, _keep_columns, 1)  # for batches that fit no other layout

LAYOUTS: tuple[Layout, ...] = (  # tried in order: the first whose keys the batch has decides
    Layout("rollout", ("input_ids", "attention_mask", "response_mask"), _rollout_extents, _rollout_trim, 1, output_key="response_mask"),
    Layout("pairs", ("chosen_attention_mask", "rejected_attention_mask"), _pair_extents, _right_trim("chosen_attention_mask"), 2),
    Layout("sequences", ("input_ids", "attention_mask"), _sequence_extents, _right_trim("attention_mask"), 1),
)


def find_layout(batch: Batch) -> tuple[Layout, torch.Tensor]:
    """(the batch's layout, its rows' extents [B, parts]): the first of LAYOUTS whose keys the batch has, or
    UNTRIMMED when there is none or the batch's masks are not that layout's padding."""
    for layout in LAYOUTS:
        if all(isinstance(batch.get(key), torch.Tensor) for key in layout.keys):
            extents = layout.extents(batch)
            if extents is None:
                break
            return layout, extents
    return UNTRIMMED, _whole_width_extents(batch)


def trim_columns(layout: Layout, batch: Batch, extents: torch.Tensor) -> Batch:
    """``batch`` (some rows with their ``extents``) cut to the widest row of each part.

    A part keeps at least one column, so a micro-batch of empty responses still has the shape the forward expects.
    """
    return layout.trim(batch, [max(int(w), 1) for w in extents.max(dim=0).values.tolist()])


def cut_micro_batches(layout: Layout, batch: Batch, extents: torch.Tensor, rows: list[list[int]]) -> list[Batch]:
    """One micro-batch per index list in ``rows``: those rows of ``batch``, trimmed to the columns they need."""
    return [trim_columns(layout, index_batch(batch, r), extents[r]) for r in rows]


def untrim_output(layout: Layout, output: torch.Tensor, batch: Batch) -> torch.Tensor:
    """A micro-batch's per-token output [b, w', ...] padded with zeros back to the width of ``batch[layout.output_key]``
    (the untrimmed batch's R); outputs of per-row layouts, and 1-D outputs, are returned as they are."""
    if layout.output_key is None or output.dim() < 2:
        return output
    full_width = batch[layout.output_key].shape[1]
    pad = torch.zeros((output.shape[0], full_width - output.shape[1], *output.shape[2:]), dtype=output.dtype)
    return torch.cat([output, pad], dim=1)
