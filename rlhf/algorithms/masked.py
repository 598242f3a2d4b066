"""Reductions over masked tokens: sums, means, variances and whitening (loss aggregation: `loss_agg`).

A mask is a bool or 0/1 float tensor that is 1 on the tokens that count (response
tokens) and 0 on padding, which may sit on either side or in between. Entries
outside the mask are *selected away* with ``torch.where`` rather than multiplied
by 0, so garbage in padding (``inf``/``nan`` logprobs of pad tokens) cannot leak
into a result: ``nan * 0`` is ``nan``, a ``where`` is not.
"""

import torch


def _zero_outside(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), x, torch.zeros_like(x))


def _count(mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Number of masked entries (over ``dim``, or all of them when ``dim`` is None)."""
    ones = mask.bool().to(torch.get_default_dtype())
    return ones.sum() if dim is None else ones.sum(dim)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """sum_{i: mask_i = 1} x_i, over ``dim`` (or over every entry when ``dim`` is None)."""
    selected = _zero_outside(x, mask)
    return selected.sum() if dim is None else selected.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """sum(x * mask) / sum(mask), over ``dim`` (or over every entry when ``dim`` is None).

    An empty mask gives 0, not nan: the count is clamped to at least 1, and its sum is 0.
    """
    count = _count(mask, dim).to(x.dtype)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of ``x`` (all of them, one scalar).

    var = sum(mask * (x - mean)^2) / (n - 1)   if unbiased (Bessel's correction)
    var = sum(mask * (x - mean)^2) / n         otherwise,  with n = sum(mask).

    Raises ValueError when fewer than 2 entries are masked and ``unbiased`` is set,
    because the unbiased variance of one sample is undefined.
    """
    n = _count(mask)
    if unbiased and n.item() < 2:
        raise ValueError(f"unbiased masked_var needs at least 2 masked entries, got {int(n.item())}")
    mean = masked_mean(x, mask)
    sum_sq = masked_sum((x - mean) ** 2, mask)
    return sum_sq / (n - 1) if unbiased else sum_sq / n.clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise the masked entries of ``x`` to zero mean and unit variance (as TRL's masked_whiten).

    whitened = (x - mean) / sqrt(var + eps), mean and (unbiased) var over masked entries;
    with ``shift_mean=False`` the mean is added back: whitened + mean (only the scale changes).
    Entries outside the mask are 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _zero_outside(whitened, mask)
