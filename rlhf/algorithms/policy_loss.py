"""The policy-gradient loss shared by PPO and the critic-free algorithms: a table of importance-ratio
types (token: PPO; sequence: GSPO), clipping (symmetric, clip-higher, dual clip), truncated importance
sampling against the rollout engine's logprobs, the entropy bonus and KL as a loss term.

Per-token tensors are [B, T] with a mask [B, T] (1 on response tokens). Every loss and metric is
aggregated with `rlhf.algorithms.loss_agg.aggregate` under one loss_agg_mode and the step's
normaliser ``count``, so the micro-batches' shares add up to the step's value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhf.algorithms.loss_agg import aggregate
from rlhf.algorithms.ppo import kl_estimate


def token_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PPO (Schulman et al. 2017): log r_t = logp_t - old_logp_t."""
    return logp - old_logp


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071), in its GSPO-token form.

    log s_b   = (1 / n_b) sum_t m[b,t] (logp[b,t] - old_logp[b,t])     the geometric mean of row b's token ratios
    log s_b,t = sg[log s_b] + logp[b,t] - sg[logp[b,t]]                sg = stop-gradient

    Its value is s_b on every token of row b; its gradient is s_b * grad logp[b,t]. With one
    advantage per row and loss_agg_mode=seq_mean_token_mean this is the paper's sequence-level
    objective mean_b min(s_b A_b, clip(s_b) A_b) exactly (GSPO-token, eq. 13-14).
    """
    is_response = mask.bool()
    diff = torch.where(is_response, logp - old_logp, torch.zeros_like(logp))
    lengths = is_response.sum(-1, keepdim=True).clamp(min=1)
    row_log_ratio = (diff.sum(-1, keepdim=True) / lengths).detach()
    return row_log_ratio + logp - logp.detach()


@dataclass(frozen=True)
class PolicyLossType:
    """One entry of the table: how the importance ratio is formed (the clipping is shared)."""

    log_ratio: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    paper: str


POLICY_LOSS_TYPES: dict[str, PolicyLossType] = {
    "ppo": PolicyLossType(token_log_ratio, "Schulman et al. 2017, arXiv 1707.06347"),
    "gspo": PolicyLossType(sequence_log_ratio, "Zheng et al. 2025, arXiv 2507.18071"),
}


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
    *,
    clip_eps_low: float | None = None,
    clip_ratio_c: float | None = None,
    loss_type: str = "ppo",
    weights: torch.Tensor | None = None,
    loss_agg_mode: str = "token_mean",
    count: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate loss with clip-higher and dual clip; the ratio r comes from POLICY_LOSS_TYPES[loss_type].

    lo = clip_eps_low or clip_eps, hi = clip_eps_high or clip_eps   (hi > lo: DAPO's clip-higher, arXiv 2503.14476)
    s_t = min(r_t A_t, clip(r_t, 1 - lo, 1 + hi) A_t)               (PPO, Schulman et al. 2017)
    s_t = max(s_t, c A_t)   where A_t < 0, c = clip_ratio_c > 1     (dual clip, Ye et al. 2020, arXiv 1912.09729)
    loss_t = -w_t s_t        (w: detached per-token weights, e.g. truncated importance sampling; 1 when None)
    loss = aggregate(loss_t, mask, loss_agg_mode, count)

    stats (detached, aggregated the same way):
      clipfrac      = fraction of tokens where the clipped term is strictly smaller, i.e. chosen (no gradient);
      dual_clipfrac = fraction of tokens where the dual clip c A_t is chosen (no gradient);
      approx_kl     = 0.5 * (logp - old_logp)^2 per token, the k2 estimate of KL(old || new).
    """
    try:
        ratio_type = POLICY_LOSS_TYPES[loss_type]
    except KeyError:
        raise ValueError(f"unknown policy loss type {loss_type!r}; valid: {', '.join(POLICY_LOSS_TYPES)}") from None
    if clip_ratio_c is not None and clip_ratio_c <= 1:
        raise ValueError(f"clip_ratio_c must be > 1, got {clip_ratio_c}")
    low = clip_eps if clip_eps_low is None else clip_eps_low
    high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(ratio_type.log_ratio(logp, old_logp, mask))
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - low, 1 + high) * advantages
    surrogate = torch.minimum(unclipped, clipped)
    dual_clipped = torch.zeros_like(surrogate, dtype=torch.bool)
    if clip_ratio_c is not None:
        floor = clip_ratio_c * advantages
        dual_clipped = (advantages < 0) & (floor > surrogate)
        surrogate = torch.where(dual_clipped, floor, surrogate)
    per_token = -surrogate if weights is None else -weights.detach() * surrogate
    loss = aggregate(per_token, mask, loss_agg_mode, count)
    with torch.no_grad():
        stats = {
            "clipfrac": aggregate(clipped < unclipped, mask, loss_agg_mode, count),
            "dual_clipfrac": aggregate(dual_clipped, mask, loss_agg_mode, count),
            "approx_kl": aggregate(0.5 * (logp - old_logp) ** 2, mask, loss_agg_mode, count),
        }
    return loss, stats


@torch.no_grad()
def truncated_is_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level truncated importance sampling against the rollout engine (Yao et al. 2025, "Your efficient RL
    framework secretly brings you off-policy RL training"; TRL's vllm_importance_sampling_correction).

    rho_t = exp(old_logp_t - rollout_logp_t)    trainer's / engine's probability of the sampled token
    w_t   = min(rho_t, cap)                       detached: it reweights the gradient, it is not trained
    Returns (w, rho).
    """
    if cap <= 0:
        raise ValueError(f"importance-sampling cap must be > 0, got {cap}")
    rho = torch.exp(old_logp - rollout_logp)
    return rho.clamp(max=cap), rho


@dataclass(frozen=True)
class PolicyObjective:
    """The policy's whole loss on a batch: policy gradient (with optional rollout correction), entropy bonus, KL loss.

    loss = aggregate(-w_t s_t)                            policy_loss, w = truncated_is_weights (1 when cap is None)
         - entropy_coef * aggregate(H_t)                  entropy bonus
         + kl_loss_coef * aggregate(k(logp_t, ref_t))     KL to the reference as a loss term, as GRPO (arXiv 2402.03300)
    all with one loss_agg_mode and the step's count (``rlhf.algorithms.loss_agg``).
    """

    loss_type: str = "ppo"
    clip_eps: float = 0.2
    clip_eps_low: float | None = None
    clip_eps_high: float | None = None
    clip_ratio_c: float | None = None
    entropy_coef: float = 0.0
    kl_loss_coef: float = 0.0
    kl_loss_estimator: str = "k3"
    rollout_is_cap: float | None = None
    loss_agg_mode: str = "token_mean"

    def __call__(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        *,
        entropy: torch.Tensor | None = None,
        ref_logp: torch.Tensor | None = None,
        rollout_logp: torch.Tensor | None = None,
        count: float | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Returns (loss, shares, maxima): the loss and the metrics that add up over micro-batches (shares,
        aggregated like the loss), and those reduced by max (maxima). Metric names: loss (the policy-gradient
        term), clipfrac, dual_clipfrac, approx_kl, entropy, kl_loss, rollout_is_ratio_mean, rollout_is_clipfrac;
        maxima: rollout_is_ratio_max."""

        def agg(x):
            return aggregate(x, mask, self.loss_agg_mode, count)

        shares: dict[str, torch.Tensor] = {}
        maxima: dict[str, torch.Tensor] = {}
        weights = None
        if self.rollout_is_cap is not None:
            if rollout_logp is None:
                raise ValueError("rollout_is_cap is set: the batch needs rollout_logprobs")
            weights, rho = truncated_is_weights(old_logp, rollout_logp.to(old_logp.dtype), self.rollout_is_cap)
            shares["rollout_is_ratio_mean"] = agg(rho)
            shares["rollout_is_clipfrac"] = agg(rho > self.rollout_is_cap)
            maxima["rollout_is_ratio_max"] = torch.where(mask.bool(), rho, torch.zeros_like(rho)).max()
        pg_loss, stats = policy_loss(
            logp, old_logp, advantages, mask, self.clip_eps, self.clip_eps_high,
            clip_eps_low=self.clip_eps_low, clip_ratio_c=self.clip_ratio_c, loss_type=self.loss_type,
            weights=weights, loss_agg_mode=self.loss_agg_mode, count=count,
        )
        loss = pg_loss
        shares.update(loss=pg_loss.detach(), **stats)
        if entropy is not None:
            mean_entropy = agg(entropy)
            shares["entropy"] = mean_entropy.detach()
            if self.entropy_coef > 0:
                loss = loss - self.entropy_coef * mean_entropy
        if self.kl_loss_coef > 0:
            if ref_logp is None:
                raise ValueError("kl_loss_coef > 0: the batch needs ref_logprobs")
            kl = agg(kl_estimate(logp, ref_logp.to(logp.dtype), self.kl_loss_estimator))
            shares["kl_loss"] = kl.detach()
            loss = loss + self.kl_loss_coef * kl
        return loss, shares, maxima
