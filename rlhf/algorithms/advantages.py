"""Advantage estimators: GAE with a critic, and the critic-free group and batch baselines, as one table.

Inputs of one rollout batch (`AdvantageInputs`): scores [B] (one per response, after
`ppo_targets.adjust_scores`), the per-token KL estimate kl [B, T] and its coefficient, the
response mask [B, T], group ids [B] (the prompt each response answers; groups may differ in
size and need not be contiguous), values [B, T] (GAE only), gamma and lambda. Every estimator
returns advantages [B, T] (0 outside the mask) and returns [B, T] for a critic, or None.

"KL in the reward" means the per-token reward r_t = -kl_coef * kl_t, plus the score on the last
response token (`ppo.shape_rewards`). The outcome estimators (grpo, dr_grpo, rloo) add the KL
part as a return-to-go, A_t = a_i - kl_coef * sum_{t' >= t} gamma^(t'-t) kl_t', so with kl_coef = 0
their advantage is the per-response a_i on every token.

A group of one response has no baseline from its peers: grpo, dr_grpo and rloo give it a = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from rlhf.algorithms.masked import whiten
from rlhf.algorithms.ppo import gae, shape_rewards

GROUP_STD_EPS = 1e-6  # GRPO's std guard: an all-equal group gets advantage 0 / (0 + eps) = 0


@dataclass
class AdvantageInputs:
    scores: torch.Tensor  # [B]
    kl: torch.Tensor  # [B, T], 0 outside the mask (all 0 when no reference is run)
    mask: torch.Tensor  # [B, T]
    group_ids: torch.Tensor  # [B] long
    kl_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 1.0
    values: torch.Tensor | None = None  # [B, T], GAE only
    whiten_advantages: bool = False  # GAE only


# -- group statistics ------------------------------------------------------------------------------------


def group_stats(scores: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per response, its group's (mean, unbiased std, size): [B] each.

    mean_g = sum_{j in g} s_j / n_g,   std_g = sqrt(sum_{j in g} (s_j - mean_g)^2 / (n_g - 1))  (0 when n_g = 1).
    """
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    s = scores.double()
    size = torch.zeros(n_groups, dtype=s.dtype).index_add_(0, inverse, torch.ones_like(s))
    mean = torch.zeros(n_groups, dtype=s.dtype).index_add_(0, inverse, s) / size
    dev2 = (s - mean[inverse]) ** 2
    var = torch.zeros(n_groups, dtype=s.dtype).index_add_(0, inverse, dev2) / (size - 1).clamp(min=1)
    dtype = scores.dtype if scores.is_floating_point() else torch.float32
    return mean[inverse].to(dtype), var.sqrt()[inverse].to(dtype), size[inverse].to(dtype)


def grpo_outcome(scores: torch.Tensor, group_ids: torch.Tensor, eps: float = GROUP_STD_EPS) -> torch.Tensor:
    """GRPO's outcome advantage (Shao et al. 2024, "DeepSeekMath", sec. 4.1.2): a_i = (s_i - mean_g) / (std_g + eps).

    std_g is the unbiased group std, as TRL and verl compute it. [B].
    """
    mean, std, _ = group_stats(scores, group_ids)
    return (scores - mean) / (std + eps)


def dr_grpo_outcome(scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO's outcome advantage (Liu et al. 2025, "Understanding R1-Zero-Like Training"): a_i = s_i - mean_g.

    No division by the group std (which up-weights groups that are almost all right or all wrong);
    the other half of the fix, no length normalisation, is the loss aggregation. [B].
    """
    mean, _, _ = group_stats(scores, group_ids)
    return scores - mean


def rloo_outcome(scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, "Back to Basics"; Kool et al. 2019): a leave-one-out baseline.

    a_i = s_i - (sum_{j in g, j != i} s_j) / (n_g - 1)  =  n_g / (n_g - 1) * (s_i - mean_g);   0 when n_g = 1. [B].
    """
    mean, _, size = group_stats(scores, group_ids)
    return (scores - mean) * size / (size - 1).clamp(min=1)


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{t' >= t} gamma^(t'-t) r_t' over the masked tokens of each row: GAE with V = 0 and lambda = 1."""
    return gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)[0]


# -- the estimators ----------------------------------------------------------------------------------------


def _kl_rewards(x: AdvantageInputs) -> torch.Tensor:
    return shape_rewards(torch.zeros_like(x.scores), x.kl, x.mask, x.kl_coef)


def _outcome(outcome: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    def estimate(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
        """A_t = a_i + return-to-go of the KL rewards, 0 outside the mask."""
        a = outcome(x.scores.float(), x.group_ids).unsqueeze(-1).expand_as(x.kl).to(x.kl.dtype)
        advantages = torch.where(x.mask.bool(), a, torch.zeros_like(a))
        if x.kl_coef:
            advantages = advantages + returns_to_go(_kl_rewards(x), x.mask, x.gamma)
        return advantages, None

    return estimate


def gae_estimate(x: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016) on the KL-shaped rewards with the critic's values; whitened per batch when asked."""
    if x.values is None:
        raise ValueError("gae needs the critic's values")
    rewards = shape_rewards(x.scores, x.kl, x.mask, x.kl_coef)
    advantages, returns = gae(rewards, x.values, x.mask, x.gamma, x.lam)
    if x.whiten_advantages and x.mask.sum() > 1:
        advantages = whiten(advantages, x.mask)
    return advantages, returns


def reinforce_pp(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """REINFORCE++ (Hu 2025, "REINFORCE++: a simple and efficient approach for aligning LLMs").

    r_t = -kl_coef * kl_t + [t = last] s_i;   G_t = sum_{t' >= t} gamma^(t'-t) r_t';
    A = (G - mean(G)) / std(G), mean and std over every response token of the batch (global normalisation).
    """
    returns = returns_to_go(shape_rewards(x.scores, x.kl, x.mask, x.kl_coef), x.mask, x.gamma)
    return (whiten(returns, x.mask) if x.mask.sum() > 1 else torch.zeros_like(returns)), None


def reinforce_pp_baseline(x: AdvantageInputs) -> tuple[torch.Tensor, None]:
    """REINFORCE++-baseline (Hu 2025): s_i' = s_i - mean_g, then REINFORCE++ on s' (KL in the reward, global normalisation)."""
    mean, _, _ = group_stats(x.scores, x.group_ids)
    return reinforce_pp(replace(x, scores=x.scores - mean))


Estimator = Callable[[AdvantageInputs], "tuple[torch.Tensor, torch.Tensor | None]"]

ESTIMATORS: dict[str, Estimator] = {
    "gae": gae_estimate,  # the only one that reads values: the algorithms using it start a critic
    "grpo": _outcome(grpo_outcome),
    "dr_grpo": _outcome(dr_grpo_outcome),
    "rloo": _outcome(rloo_outcome),
    "reinforce_pp": reinforce_pp,
    "reinforce_pp_baseline": reinforce_pp_baseline,
}


@torch.no_grad()  # advantages and returns are targets: no gradient flows back through them
def estimate_advantages(name: str, inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(advantages [B, T], returns [B, T] or None) from the estimator ``name`` of `ESTIMATORS`."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; valid: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name](inputs)
