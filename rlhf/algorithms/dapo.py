"""DAPO's sampling-side parts (Yu et al. 2025, "DAPO: an open-source LLM reinforcement learning system at scale"):
which groups dynamic sampling keeps, and the overlong soft penalty.

(Its other two parts, clip-higher and the token-level loss, are policy-loss and loss-aggregation options.)
"""

from __future__ import annotations

import torch


def informative_groups(scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Dynamic sampling's filter: [B] bool, True for responses whose group's scores are not all equal.

    A group whose responses all score the same (all right, all wrong) has zero group-relative
    advantage, so it adds no gradient and only dilutes the batch: DAPO drops it and samples more
    prompts instead. keep_i = max_{j in g(i)} s_j > min_{j in g(i)} s_j.
    """
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n = int(inverse.max().item()) + 1 if inverse.numel() else 0
    s = scores.double()
    high = torch.full((n,), -torch.inf, dtype=s.dtype).scatter_reduce(0, inverse, s, "amax")
    low = torch.full((n,), torch.inf, dtype=s.dtype).scatter_reduce(0, inverse, s, "amin")
    return (high > low)[inverse]


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (eq. 13), added to the score of each response of ``lengths`` tokens:

        R(y) = 0                                     if |y| <= L_max - L_cache
             = ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
             = -1                                    if |y| > L_max

    with L_max = ``max_len`` (rollout.max_new_tokens), L_cache = ``buffer``; scaled by ``penalty``. [B].
    """
    if not 0 < buffer <= max_len:
        raise ValueError(f"overlong buffer must be in [1, max_len={max_len}], got {buffer}")
    free = max_len - buffer
    excess = (lengths.float() - free).clamp(min=0) / buffer
    return -penalty * excess.clamp(max=1.0)


def fill_batch(informative: torch.Tensor, group_ids: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, int]:
    """Rows of the first ``n_groups`` groups, informative groups first (in order of first appearance), then, if
    too few were sampled, uninformative ones to keep the batch size fixed (they carry no advantage).

    Returns (row indices, group-contiguous, [n_groups * group size]; how many uninformative groups were used).
    """
    order: list[int] = []
    first_row: dict[int, int] = {}
    for row, g in enumerate(group_ids.tolist()):
        if g not in first_row:
            first_row[g] = row
            order.append(g)
    useful = [g for g in order if bool(informative[first_row[g]])]
    rest = [g for g in order if not bool(informative[first_row[g]])]
    if len(useful) + len(rest) < n_groups:
        raise ValueError(f"fill_batch: {len(useful) + len(rest)} groups sampled, {n_groups} needed")
    chosen = useful[:n_groups]
    filled = max(0, n_groups - len(chosen))
    chosen += rest[:filled]
    rows = [torch.nonzero(group_ids == g).flatten() for g in chosen]
    return torch.cat(rows), filled
