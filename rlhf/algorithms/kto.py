"""KTO: Kahneman-Tversky optimisation on unpaired desirable/undesirable examples (Ethayarajh et al. 2024), as in TRL.

Inputs are per-example sequence log-probabilities [B] (summed over the completion tokens) under
the policy and the frozen reference, a boolean ``desirable`` label per example, and the reference
point z_ref, estimated from mismatched (prompt, completion) pairs: which completion goes with which
prompt is `rlhf.data.collate.kl_partners`. Losses are returned per example, unreduced.
"""

from __future__ import annotations

import torch

# The paper's recommended range for lambda_D n_D / (lambda_U n_U) (Ethayarajh et al. 2024, eq. 8).
RECOMMENDED_WEIGHT_RATIO = (1.0, 4.0 / 3.0)


def kto_reference_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """z_ref, the KL estimate that KTO's value function is measured from (TRL's ``kl``): a detached scalar.

        z_ref = max(0, mean_i [log pi(y'_i | x_i) - log pi_ref(y'_i | x_i)])

    over mismatched pairs (x_i, y'_i): example i's prompt with another example's completion
    (`rlhf.data.collate.kl_partners`). The mean is over every mismatched pair of the optimizer step
    (TRL averages over its per-device batches, then across devices). Clamped at 0, as the paper
    does, since a KL cannot be negative; no gradient flows through it.
    """
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    z_ref: float | torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example KTO losses and implicit rewards, with TRL's formulas (Ethayarajh et al. 2024, eq. 7).

    r = log pi(y|x) - log pi_ref(y|x), sigma = sigmoid:
        desirable:   lambda_D * (1 - sigma(beta * (r - z_ref)))
        undesirable: lambda_U * (1 - sigma(beta * (z_ref - r)))
    rewards = beta * r, detached. ``desirable`` [B] is bool; lambda_D = ``desirable_weight``,
    lambda_U = ``undesirable_weight``. Returns (losses, rewards), each [B].
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    logratios = policy_logps - ref_logps
    z_ref = torch.as_tensor(z_ref, dtype=logratios.dtype, device=logratios.device)
    margin = torch.where(desirable, logratios - z_ref, z_ref - logratios)
    weights = torch.where(desirable, desirable_weight, undesirable_weight).to(logratios.dtype)
    losses = weights * (1 - torch.sigmoid(beta * margin))
    return losses, beta * logratios.detach()


def kto_counts(desirable: torch.Tensor) -> dict[str, torch.Tensor]:
    """This batch's part of KTO's normalisers: its examples, desirable ("chosen") and undesirable ("rejected") ones."""
    desirable = desirable.bool()
    return {"rows": torch.tensor(float(len(desirable))), "chosen": desirable.sum().double(), "rejected": (~desirable).sum().double()}


def kto_stats(
    losses: torch.Tensor,
    rewards: torch.Tensor,
    policy_logps: torch.Tensor,
    desirable: torch.Tensor,
    counts: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """TRL's KTO metrics, as this batch's shares of the step's means (they add up over micro-batches and ranks).

        loss = sum_i losses_i / #rows
        rewards/chosen = sum_{i desirable} rewards_i / #desirable,  logps/chosen likewise
        rewards/rejected = sum_{i undesirable} rewards_i / #undesirable,  logps/rejected likewise
        rewards/margins = rewards/chosen - rewards/rejected

    ``counts`` ({rows, chosen, rejected}: `kto_counts` summed over the step), or None for this
    batch's own (plain means). A label with no example in the step has no metrics (as in TRL);
    margins need both. All detached.
    """
    desirable = desirable.bool()
    if counts is None:
        counts = {k: float(v) for k, v in kto_counts(desirable).items()}
    stats = {"loss": losses.detach().sum() / max(counts["rows"], 1)}
    for name, selected in (("chosen", desirable), ("rejected", ~desirable)):
        if counts[name] > 0:
            stats[f"rewards/{name}"] = rewards.detach()[selected].sum() / counts[name]
            stats[f"logps/{name}"] = policy_logps.detach()[selected].sum() / counts[name]
    if counts["chosen"] > 0 and counts["rejected"] > 0:
        stats["rewards/margins"] = stats["rewards/chosen"] - stats["rewards/rejected"]
    return stats


def weight_ratio_warning(n_desirable: int, n_undesirable: int, desirable_weight: float, undesirable_weight: float) -> str | None:
    """A warning when lambda_D n_D / (lambda_U n_U) is outside the paper's recommended [1, 4/3] (eq. 8), else None."""
    low, high = RECOMMENDED_WEIGHT_RATIO
    ratio = desirable_weight * n_desirable / max(undesirable_weight * n_undesirable, 1e-12)
    if low <= ratio <= high:
        return None
    return (f"desirable_weight*n_desirable / (undesirable_weight*n_undesirable) = {desirable_weight}*{n_desirable} / "
            f"({undesirable_weight}*{n_undesirable}) = {ratio:.3f}, outside the range [1, 4/3] that the KTO paper "
            f"recommends; e.g. desirable_weight in [{low * undesirable_weight * n_undesirable / max(n_desirable, 1):.3g}, "
            f"{high * undesirable_weight * n_undesirable / max(n_desirable, 1):.3g}]")
