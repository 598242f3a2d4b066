"""PPO with a KL penalty: reward shaping, GAE, the clipped value loss, KL estimators and controllers.

The policy-gradient loss, shared with the critic-free algorithms, is in `rlhf.algorithms.policy_loss`.

All per-token tensors are [B, T] and come with a mask [B, T] that is 1 on response
tokens; padding may be on the left, on the right, or both. Outputs are 0 where the
mask is 0.
"""

import torch

from rlhf.algorithms.loss_agg import aggregate
from rlhf.algorithms.masked import masked_var, whiten

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "KL_ESTIMATORS",
    "explained_variance",
    "gae",
    "kl_estimate",
    "shape_rewards",
    "value_loss",
    "whiten",
]

# d = logp - ref_logp -> per-token estimate (see kl_estimate)
KL_ESTIMATORS = {
    "k1": lambda d: d,
    "k2": lambda d: 0.5 * d**2,
    "k3": lambda d: torch.exp(-d) + d - 1,
}


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || ref) from samples of the policy (Schulman, "Approximating KL divergence").

    With d = logp - ref_logp:
      k1 = d                        unbiased, high variance, can be negative
      k2 = 0.5 * d^2                biased, low variance, >= 0
      k3 = exp(-d) - (-d) - 1       unbiased, low variance, >= 0
         = exp(ref_logp - logp) - (ref_logp - logp) - 1
    """
    try:
        estimator = KL_ESTIMATORS[kind]
    except KeyError:
        raise ValueError(f"unknown KL estimator {kind!r}; valid: {', '.join(KL_ESTIMATORS)}") from None
    return estimator(logp - ref_logp)


def shape_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards for PPO with a KL penalty.

    r[b, t] = -kl_coef * kl[b, t]  + (scores[b] if t is the last t with mask[b, t] = 1 else 0)
    on response tokens, 0 elsewhere. A sequence with an empty mask gets all zeros
    (its score has no token to land on).
    """
    is_response = mask.bool()
    positions = torch.arange(mask.shape[-1], device=mask.device)
    # The largest position with mask 1; an all-zero row gives 0, which the final where discards.
    last = torch.where(is_response, positions, 0).argmax(dim=-1, keepdim=True)
    score_at_last = torch.zeros_like(kl).scatter(-1, last, scores.to(kl.dtype).unsqueeze(-1))
    rewards = -kl_coef * kl + score_at_last
    return torch.where(is_response, rewards, torch.zeros_like(rewards))


@torch.no_grad()  # advantages and returns are targets: no gradient may flow back through them into the critic
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over the masked tokens of each row.

    delta_t = r_t + gamma * V_next - V_t
    A_t     = delta_t + gamma * lam * A_next
    R_t     = A_t + V_t
    where "next" is the next position with mask 1 (padding between response tokens is
    skipped, never read), and V_next = A_next = 0 after the last response token.
    Returns (advantages, returns), both [B, T] and 0 where the mask is 0.
    """
    is_response = mask.bool()
    zero = torch.zeros_like(values[:, 0])
    next_value, next_advantage = zero, zero
    advantages = [zero] * values.shape[-1]
    for t in reversed(range(values.shape[-1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        here = is_response[:, t]
        advantages[t] = torch.where(here, advantage, zero)
        # At a padding position the carried "next" values pass through unchanged.
        next_value = torch.where(here, values[:, t], next_value)
        next_advantage = torch.where(here, advantage, next_advantage)
    advantages = torch.stack(advantages, dim=-1)
    returns = torch.where(is_response, advantages + values, torch.zeros_like(values))
    return advantages, returns


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None,
    loss_agg_mode: str = "token_mean",
    count: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss, aggregated with ``rlhf.algorithms.loss_agg.aggregate`` (mode, the step's count).

    v_clip = old_v + clip(v - old_v, -clip, clip)
    loss_t = 0.5 * max((v - R)^2, (v_clip - R)^2)       (clip=None: 0.5 * (v - R)^2)
    loss   = aggregate(loss_t, mask, loss_agg_mode, count)

    stats: clipfrac = fraction of masked tokens where the clipped term is strictly larger
    (these tokens get no gradient), aggregated the same way; 0 when clip is None.
    """
    unclipped = (values - returns) ** 2
    if clip is None:
        loss = 0.5 * aggregate(unclipped, mask, loss_agg_mode, count)
        return loss, {"clipfrac": torch.zeros((), dtype=loss.dtype, device=values.device)}
    values_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    clipped = (values_clipped - returns) ** 2
    loss = 0.5 * aggregate(torch.maximum(unclipped, clipped), mask, loss_agg_mode, count)
    with torch.no_grad():
        clipfrac = aggregate(clipped > unclipped, mask, loss_agg_mode, count)
    return loss, {"clipfrac": clipfrac}


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R) over masked tokens: 1 is a perfect critic, 0 no better than a constant.

    Both variances are biased (the 1/n cancels). nan when Var(R) = 0, where it is undefined.
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    var_residual = masked_var(returns - values, mask, unbiased=False)
    if var_returns.item() == 0:
        return torch.full_like(var_returns, float("nan"))
    return 1 - var_residual / var_returns


class FixedKLController:
    """A constant KL coefficient; ``update`` is a no-op so the drivers treat both controllers alike."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt: the coefficient is fixed."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 ("Fine-tuning language models from human preferences").

    error = clip(current_kl / target - 1, -0.2, 0.2)
    value <- value * (1 + error * n_steps / horizon)

    The coefficient grows while the measured KL is above ``target`` and shrinks while below;
    ``horizon`` (in samples) sets how fast. ``state_dict`` carries the current value, so a
    resumed run continues from it instead of restarting at ``init_kl_coef``.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
