"""Reward-model training on preference pairs: the Bradley-Terry pairwise loss and its accuracy."""

import torch
import torch.nn.functional as F

from rlhf.algorithms.loss_agg import row_share


def pairwise_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood per pair (margin as in Llama 2's reward model).

    loss = -log sigmoid(r_chosen - r_rejected - margin),   margin = 0 when None.
    Returns [B], unreduced.
    """
    difference = chosen_rewards - rejected_rewards
    if margin is not None:
        difference = difference - margin
    return -F.logsigmoid(difference)


@torch.no_grad()
def pairwise_accuracy(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, count: float | torch.Tensor | None = None
) -> torch.Tensor:
    """sum_b [r_chosen > r_rejected] / count, a float scalar (count None: B, the mean); a tie counts as wrong.

    With the step's pair count, this batch's share of the step's accuracy (`loss_agg.row_share`).
    """
    return row_share((chosen_rewards > rejected_rewards).float(), count)
