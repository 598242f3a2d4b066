"""Supervised fine-tuning: masked token-level negative log-likelihood."""

import torch

from rlhf.algorithms.logprobs import logprobs_from_logits
from rlhf.algorithms.masked import masked_reduce


def sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, reduction: str = "token_mean"
) -> torch.Tensor:
    """Negative log-likelihood of ``labels`` [B, T] under ``logits`` [B, T, V], over masked tokens.

    nll[b, t] = -log softmax(logits[b, t])[labels[b, t]]   (logits[:, t] predicts labels[:, t]; the caller shifts)
    "token_mean": sum_{b,t} mask * nll / sum_{b,t} mask            (every token weighs the same)
    "seq_mean":   mean_b (sum_t mask * nll / sum_t mask)             (every sequence weighs the same)
    """
    return masked_reduce(-logprobs_from_logits(logits, labels), mask, reduction)
