"""Reward-model training on preference pairs: the Bradley-Terry pairwise loss and its accuracy."""

import torch
import torch.nn.functional as F


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
def pairwise_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """mean_b [r_chosen > r_rejected], a float scalar; a tie counts as wrong."""
    return (chosen_rewards > rejected_rewards).float().mean()
