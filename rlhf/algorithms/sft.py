"""Supervised fine-tuning: masked token-level negative log-likelihood."""

import torch

from rlhf.algorithms.logprobs import logprobs_from_logits
from rlhf.algorithms.loss_agg import aggregate


def sft_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    loss_agg_mode: str = "token_mean",
    count: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Negative log-likelihood of ``labels`` [B, T] under ``logits`` [B, T, V], over masked tokens.

    nll[b, t] = -log softmax(logits[b, t])[labels[b, t]]   (logits[:, t] predicts labels[:, t]; the caller shifts)
    loss = aggregate(nll, mask, loss_agg_mode, count)      (`rlhf.algorithms.loss_agg`):
      token_mean: sum_{b,t} mask * nll / (step's token count); seq_mean_token_mean: every sequence weighs the same.
    """
    return aggregate(-logprobs_from_logits(logits, labels), mask, loss_agg_mode, count)
