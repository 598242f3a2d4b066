"""Per-token log-probabilities and entropies from logits, and per-sequence log-probabilities.

Logits are [B, T, V]; ``logits[:, t]`` scores the token ``labels[:, t]`` (the caller
shifts). Both functions work one sequence at a time, so that without autograd (old,
reference and rollout logprobs) the extra memory is one [T, V] row, never a second
[B, T, V] tensor: with a 150k vocabulary a full log_softmax copy is often larger
than the model's activations.
"""

import torch
import torch.nn.functional as F

from rlhf.algorithms.masked import masked_sum

# Half-precision logits are upcast BEFORE the division by the temperature: logits / T rounded
# back to bf16 (8 significant bits) moves a logprob by up to ~0.1 nats at T=0.7 on a 32k
# vocabulary, and logsumexp in half precision loses the digits that separate nearby logprobs.
_FULL_PRECISION = (torch.float32, torch.float64)


def _scaled(row_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """z = logits / temperature, computed in float32 (or wider, if the logits already are)."""
    if row_logits.dtype not in _FULL_PRECISION:
        row_logits = row_logits.float()
    return row_logits / temperature


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(label) under softmax(logits / temperature), per token.

    logp[b, t] = z[b, t, labels[b, t]] - logsumexp_v z[b, t, v],   z = logits / temperature.

    ``labels`` [B, T] must be valid token ids everywhere, padding included (use the pad
    id there); the mask, not an ignore index, decides which tokens count. Returns [B, T]
    in float32 or wider (half-precision logits are upcast before the division).
    """
    rows = []
    for row_logits, row_labels in zip(logits, labels):
        scaled = _scaled(row_logits, temperature)
        log_norm = torch.logsumexp(scaled, dim=-1)
        chosen = scaled.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)
        rows.append(chosen - log_norm)
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature), per token.

    H[b, t] = -sum_v p_v log p_v = logsumexp_v z_v - sum_v p_v z_v,   z = logits / temperature.

    Returns [B, T] in float32 or wider.
    """
    rows = []
    for row_logits in logits:
        scaled = _scaled(row_logits, temperature)
        probs = F.softmax(scaled, dim=-1)
        rows.append(torch.logsumexp(scaled, dim=-1) - (probs * scaled).sum(-1))
    return torch.stack(rows)


def sequence_logprobs(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(response) = sum_t mask[b, t] * logp[b, t], per sequence: [B, T] -> [B]."""
    return masked_sum(token_logps, mask, dim=-1)
