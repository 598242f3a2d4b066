"""Token-budget micro-batches: rows grouped by length so that each micro-batch's padded size stays under a budget.

A row's length is given per padded part of its layout (`rlhf.data.batch_layouts`): one part for a
right-padded sequence, two for a rollout (the left-padded prompt and the right-padded response).
Trimmed to the columns its rows need, a micro-batch G costs

    padded_tokens(G) = |G| * sequences_per_row * sum_parts max_{i in G} length[i][part]

tokens through the model (sequences_per_row = 2 for preference pairs: chosen and rejected). Fixed
row counts let one long row pad all the others; here rows are sorted by total length, longest
first, and cut greedily: a micro-batch takes the next row while it keeps at most ``max_rows``
rows and ``padded_tokens <= max_tokens``. A row over the budget on its own gets its own micro-batch.
The gradient does not depend on the grouping: each micro-batch's loss is its share of the step's
loss (`rlhf.algorithms.loss_agg`).

Data-parallel ranks must run the same number of forward/backward passes (DeepSpeed reduces
gradients, and ZeRO-3 gathers parameters, collectively), so `split_to_count` splits micro-batches
further until a rank has as many as the rank with the most.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Lengths = Sequence[Sequence[int]]  # lengths[row][part]


def padded_tokens(rows: Sequence[int], lengths: Lengths, sequences_per_row: int = 1) -> int:
    """Tokens in the micro-batch of ``rows`` once trimmed: rows x sequences per row x the sum of its parts' widths."""
    if not rows:
        return 0
    width = sum(max(lengths[i][part] for i in rows) for part in range(len(lengths[rows[0]])))
    return len(rows) * sequences_per_row * width


def pack_by_tokens(lengths: Lengths, max_tokens: int, max_rows: int, sequences_per_row: int = 1) -> list[list[int]]:
    """Row indices of each micro-batch: rows by decreasing total length, cut greedily under the budget.

    A micro-batch takes the next row while it has fewer than ``max_rows`` rows and stays within
    ``max_tokens`` padded tokens (`padded_tokens`); its first row is always taken, so a row longer
    than the budget is a micro-batch of its own. Ties keep the original order.
    """
    if max_tokens < 1 or max_rows < 1:
        raise ValueError(f"max_tokens and max_rows must be positive, got {max_tokens} and {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: -sum(lengths[i]))
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        candidate = current + [i]
        if current and (len(candidate) > max_rows or padded_tokens(candidate, lengths, sequences_per_row) > max_tokens):
            groups.append(current)
            candidate = [i]
        current = candidate
    if current:
        groups.append(current)
    return groups


def split_to_count(groups: list[list[int]], lengths: Lengths, count: int, sequences_per_row: int = 1) -> list[list[int]]:
    """``groups`` split until there are ``count`` of them: the costliest group of 2+ rows is halved, again and again.

    Raises when there are fewer rows than ``count`` (every micro-batch needs a row).
    """
    rows = sum(len(g) for g in groups)
    if count > rows:
        raise ValueError(f"cannot make {count} micro-batches out of {rows} rows")
    groups = [list(g) for g in groups]
    while len(groups) < count:
        splittable = [j for j, g in enumerate(groups) if len(g) > 1]
        j = max(splittable, key=lambda j: padded_tokens(groups[j], lengths, sequences_per_row))
        half = len(groups[j]) // 2
        groups[j : j + 1] = [groups[j][:half], groups[j][half:]]
    return groups


def restore_order(outputs: Sequence[torch.Tensor], groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """The per-row outputs of the micro-batches (``outputs[k]`` for the rows ``groups[k]``) in the original row order."""
    index = torch.as_tensor([i for g in groups for i in g], dtype=torch.long)
    stacked = torch.cat(list(outputs))
    restored = torch.empty_like(stacked)
    restored[index] = stacked
    return restored
