"""Direct preference optimisation and its variants (sigmoid/cDPO, IPO, hinge/SLiC, robust DPO), as in TRL.

Inputs are per-sequence log-probabilities [B] of the chosen and rejected responses under the
policy and the frozen reference, as `preference_logps` makes them for the loss type: summed
over the response tokens, or length-averaged for IPO. Losses are returned per pair, unreduced.
"""

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
_SMOOTHED_LOSS_TYPES = ("sigmoid", "robust")
# IPO's regression target 1 / (2 beta) is for length-averaged log-probabilities (Azar et al. 2023; TRL too).
LENGTH_AVERAGED_LOSS_TYPES = ("ipo",)


def preference_logps(summed_logps: torch.Tensor, loss_mask: torch.Tensor, loss_type: str) -> torch.Tensor:
    """The sequence log-probability a DPO-family loss uses, from the summed one: [B] -> [B].

        summed:          log p(y|x)       = sum_t logp_t                   (sigmoid, hinge, robust)
        length-averaged: log p(y|x) / |y| = sum_t logp_t / sum_t m_t       (ipo)

    ``summed_logps`` [B] is `logprobs.sequence_logprobs` over the response tokens that
    ``loss_mask`` [B, T] marks (1 on response tokens; only its row sums |y| are used, so its
    alignment does not matter). The average makes IPO's loss independent of response length: a
    response repeated twice with the same per-token logprobs keeps its value.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; valid: {', '.join(DPO_LOSS_TYPES)}")
    if loss_type in LENGTH_AVERAGED_LOSS_TYPES:
        return summed_logps / loss_mask.sum(-1).clamp(min=1).to(summed_logps.dtype)
    return summed_logps


def _check_arguments(beta: float, loss_type: str, label_smoothing: float) -> None:
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; valid: {', '.join(DPO_LOSS_TYPES)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if label_smoothing != 0 and loss_type not in _SMOOTHED_LOSS_TYPES:
        # TRL ignores it here with a warning; an ignored setting is a silent config bug.
        raise ValueError(f"label_smoothing applies only to {' and '.join(_SMOOTHED_LOSS_TYPES)}, not {loss_type!r}")
    if not 0 <= label_smoothing < 0.5:
        # At 0.5 the preference label is a coin flip (and robust divides by 1 - 2 * ls = 0).
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO-family losses and implicit rewards, with TRL's formulas.

    logits = (pc - pr) - (rc - rr),  ls = label_smoothing, sigma = sigmoid
      sigmoid (Rafailov et al. 2023; cDPO when ls > 0):
          -log sigma(beta * logits) * (1 - ls) - log sigma(-beta * logits) * ls
      ipo (Azar et al. 2023; beta is the paper's tau; logps length-averaged, see `preference_logps`):
          (logits - 1 / (2 * beta))^2
      hinge (SLiC, Zhao et al. 2023):
          relu(1 - beta * logits)
      robust (Chowdhury et al. 2024; unbiased under label noise ls):
          (-log sigma(beta * logits) * (1 - ls) + log sigma(-beta * logits) * ls) / (1 - 2 * ls)

    chosen_rewards = beta * (pc - rc), rejected_rewards = beta * (pr - rr), both detached.
    ``label_smoothing`` must be in [0, 0.5) and is only accepted by sigmoid and robust.
    Returns (losses, chosen_rewards, rejected_rewards), each [B].
    """
    _check_arguments(beta, loss_type, label_smoothing)
    logits = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    ls = label_smoothing
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    else:  # robust
        losses = (-F.logsigmoid(beta * logits) * (1 - ls) + F.logsigmoid(-beta * logits) * ls) / (1 - 2 * ls)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards
