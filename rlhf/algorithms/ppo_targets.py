"""Turning a scored rollout batch into policy-gradient targets: score adjustment, KL, the advantage estimator.

This is the per-step math between "every role has scored the batch" and "run the PPO epochs",
kept in one function so the driver only orchestrates. All per-token tensors are [B, R] with the
response mask; scores are [B].
"""

from __future__ import annotations

import math

import torch

from rlhf.algorithms.masked import masked_mean, masked_sum
from rlhf.algorithms.advantages import AdvantageInputs, estimate_advantages
from rlhf.algorithms.ppo import kl_estimate


class RunningMoments:
    """Running mean and std of scores over the whole run (Chan et al. parallel update), for reward normalisation."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, x: torch.Tensor) -> None:
        """Merge a batch: with delta = mean_b - mean, n = count + n_b,
        mean' = mean + delta * n_b / n,  var' = (var*count + var_b*n_b + delta^2*count*n_b/n) / n."""
        n_b = x.numel()
        if n_b == 0:
            return
        mean_b, var_b = x.float().mean().item(), x.float().var(unbiased=False).item()
        total = self.count + n_b
        delta = mean_b - self.mean
        self.var = (self.var * self.count + var_b * n_b + delta**2 * self.count * n_b / total) / total
        self.mean += delta * n_b / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 1e-8))

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


def adjust_scores(
    scores: torch.Tensor,
    finished_with_eos: torch.Tensor,
    missing_eos_penalty: float | None = None,
    reward_clip: float | None = None,
    running: RunningMoments | None = None,
) -> torch.Tensor:
    """Scores as PPO sees them, in this order:
    s' = s - penalty * [no EOS]            (missing_eos_penalty)
    s' = s' / running_std                  (running moments updated with this batch first, when given)
    s' = clip(s', -reward_clip, reward_clip)
    """
    adjusted = scores.float().clone()
    if missing_eos_penalty is not None:
        adjusted = adjusted - missing_eos_penalty * (~finished_with_eos.bool()).float()
    if running is not None:
        running.update(adjusted)
        adjusted = adjusted / running.std
    if reward_clip is not None:
        adjusted = adjusted.clamp(-reward_clip, reward_clip)
    return adjusted


def compute_targets(
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    values: torch.Tensor | None,
    scores: torch.Tensor,
    mask: torch.Tensor,
    *,
    estimator: str,
    group_ids: torch.Tensor,
    kl_coef: float,
    kl_estimator: str,
    gamma: float,
    lam: float,
    whiten_advantages: bool,
) -> dict[str, torch.Tensor]:
    """kl_t = estimator(old_logp_t, ref_logp_t) (0 without a reference);
    (A, R) = `advantages.ESTIMATORS[estimator]` on (scores, kl, kl_coef, values, group_ids).

    Returns advantages [B, R], returns [B, R] (estimators with a critic only), kl [B, R] and
    sequence_kl = sum_t kl_t [B], the per-sequence KL that the adaptive controller tracks.
    """
    if ref_logprobs is None:
        kl = torch.zeros_like(old_logprobs)
    else:
        kl = kl_estimate(old_logprobs, ref_logprobs, kl_estimator)
        kl = torch.where(mask.bool(), kl, torch.zeros_like(kl))
    inputs = AdvantageInputs(scores=scores, kl=kl, mask=mask, group_ids=group_ids, kl_coef=kl_coef, gamma=gamma, lam=lam,
                             values=values, whiten_advantages=whiten_advantages)
    advantages, returns = estimate_advantages(estimator, inputs)
    targets = {"advantages": advantages, "kl": kl, "sequence_kl": masked_sum(kl, mask, dim=-1)}
    if returns is not None:
        targets["returns"] = returns
    return targets


def logprob_gap(rollout_logprobs: torch.Tensor, trainer_logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(max, mean) over response tokens of |rollout_logp - trainer_logp|: how far the engine drifts from the trainer."""
    gap = (rollout_logprobs - trainer_logprobs).abs()
    gap = torch.where(mask.bool(), gap, torch.zeros_like(gap))
    return gap.max().item() if gap.numel() else 0.0, masked_mean(gap, mask).item()
