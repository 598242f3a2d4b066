"""Reward-model training: the Bradley-Terry pairwise loss and its accuracy on preference pairs, and
the squared-error regression on scored responses (HelpSteer) with its Pearson correlation."""

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


# ---- regression on scored responses ---------------------------------------------------------------

def regression_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error of the predicted score per response (the attribute regression of the HelpSteer /
    SteerLM reward models, Wang et al. 2023, "HelpSteer", with one attribute):

        loss_b = (r_b - t_b)^2,   the mean over a step's N responses is the MSE (1/N) sum_b (r_b - t_b)^2.

    Returns [B], unreduced.
    """
    return (scores - targets.to(scores.dtype)) ** 2


def target_moments(targets: torch.Tensor) -> tuple[float, float]:
    """(mean, std) of a training set's targets, the population std sqrt(mean((t - mean)^2)); std 1 when
    all targets are equal (nothing to scale)."""
    targets = targets.double()
    mean = targets.mean()
    std = targets.std(unbiased=False)
    return mean.item(), std.item() if std > 0 else 1.0


def standardize(targets: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """t' = (t - mean) / std (``normalize_targets``: the model learns scores in standard units)."""
    return (targets - mean) / std


_MOMENTS = ("score", "target", "score_sq", "target_sq", "product")


@torch.no_grad()
def score_moments(scores: torch.Tensor, targets: torch.Tensor, count: float | torch.Tensor | None = None) -> dict:
    """This batch's shares of the step's first and second moments of (score r, target t): the sums over
    the batch of r, t, r^2, t^2 and r t, each over ``count`` (None: B, the means). They add up over
    micro-batches and ranks to the step's means, from which `pearson_from_moments` gives the correlation."""
    scores, targets = scores.double(), targets.double()
    values = (scores, targets, scores * scores, targets * targets, scores * targets)
    return {f"moments/{name}": row_share(v, count) for name, v in zip(_MOMENTS, values)}


def pearson_from_moments(moments: dict) -> float:
    """Pearson correlation of scores and targets from their means (`score_moments`, summed):

        rho = (E[rt] - E[r] E[t]) / sqrt((E[r^2] - E[r]^2) (E[t^2] - E[t]^2)),

    NaN when either side has no variance.
    """
    r, t, r2, t2, rt = (float(moments[f"moments/{name}"]) for name in _MOMENTS)
    variance = (r2 - r * r) * (t2 - t * t)
    return (rt - r * t) / variance**0.5 if variance > 0 else float("nan")


def pearson(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Pearson correlation of two [N] tensors (`pearson_from_moments` of their means)."""
    return pearson_from_moments(score_moments(scores, targets))
