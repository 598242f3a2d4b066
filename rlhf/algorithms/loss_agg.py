"""Loss aggregation over a whole optimizer step (verl's ``loss_agg_mode``), so the update does not depend on the split.

With per-token losses l[b, t], a mask m[b, t] (1 on the tokens that count) and n_b = sum_t m[b, t],
the step's loss over ALL its rows (every micro-batch on every data-parallel rank) is:

  token_mean            L = sum_{b,t} m*l / sum_{b,t} m              every token weighs the same (long rows weigh more)
  seq_mean_token_sum    L = sum_b (sum_t m*l) / #{b: n_b > 0}         each row's token sum, averaged over rows
  seq_mean_token_mean   L = sum_b (sum_t m*l / n_b) / #{b: n_b > 0}   every row weighs the same

Rows with an empty mask contribute nothing and are not counted. A loss written as a mean *per
micro-batch* would weigh a micro-batch of short rows like one of long rows; instead each
micro-batch contributes its *share* ``aggregate(l, m, mode, count)`` = (its part of the numerator)
/ count, where ``count`` is the step's normaliser: ``agg_count`` of every micro-batch summed over
micro-batches and ranks. The shares add up to L exactly. ``count=None`` uses this batch's own
count, i.e. L of the batch alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def _token_weights(mask: torch.Tensor) -> torch.Tensor:
    return mask


def _row_mean_weights(mask: torch.Tensor) -> torch.Tensor:
    return mask / mask.sum(-1, keepdim=True).clamp(min=1)


def _tokens(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum()


def _rows(mask: torch.Tensor) -> torch.Tensor:
    return (mask.sum(-1) > 0).to(mask.dtype).sum()


@dataclass(frozen=True)
class LossAggMode:
    """weights(mask) -> [B, T] factor on each token's loss in the numerator; count(mask) -> the normaliser's share."""

    weights: Callable[[torch.Tensor], torch.Tensor]
    count: Callable[[torch.Tensor], torch.Tensor]


LOSS_AGG_MODES: dict[str, LossAggMode] = {
    "token_mean": LossAggMode(weights=_token_weights, count=_tokens),
    "seq_mean_token_sum": LossAggMode(weights=_token_weights, count=_rows),
    "seq_mean_token_mean": LossAggMode(weights=_row_mean_weights, count=_rows),
}


def _mode(name: str) -> LossAggMode:
    try:
        return LOSS_AGG_MODES[name]
    except KeyError:
        raise ValueError(f"unknown loss_agg_mode {name!r}; valid: {', '.join(LOSS_AGG_MODES)}") from None


def agg_count(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """This batch's part of the step's normaliser: its masked tokens (token_mean) or its non-empty rows (seq_*).

    float64, so that counts stay exact when summed over a large step (float32 is exact only to 2^24).
    """
    return _mode(mode).count(mask.bool().to(torch.float64))


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, mode: str, count: float | torch.Tensor | None = None
) -> torch.Tensor:
    """This batch's share of the step's aggregate L (module docstring): numerator over this batch / ``count``.

    count: the step's normaliser (``agg_count`` summed over every micro-batch and rank); None uses
    ``agg_count(mask, mode)``, giving L of this batch alone. A count of 0 (nothing masked) gives 0.
    Entries outside the mask are selected away, so nan/inf in padding cannot leak in.
    """
    agg = _mode(mode)
    dtype = torch.promote_types(per_token.dtype, torch.float32)  # bf16 weights 1/n_b would round
    weights = agg.weights(mask.bool().to(dtype))
    contributions = torch.where(mask.bool(), per_token.to(dtype) * weights, torch.zeros((), dtype=dtype, device=weights.device))
    if count is None:
        count = agg_count(mask, mode)
    count = torch.as_tensor(count, dtype=dtype, device=contributions.device)
    return contributions.sum() / count.clamp(min=1)


def row_share(values: torch.Tensor, count: float | torch.Tensor | None = None) -> torch.Tensor:
    """This batch's share of a per-row mean over the step: sum_b values[b] / count (count None: len(values)).

    For losses defined per row or per pair (DPO, Bradley-Terry), whatever the loss_agg_mode.
    """
    if count is None:
        count = len(values)
    count = torch.as_tensor(count, dtype=values.dtype, device=values.device)
    return values.sum() / count.clamp(min=1)
