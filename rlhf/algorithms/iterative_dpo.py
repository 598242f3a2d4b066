"""Iterative (online) DPO: the round's preference pairs from scored samples, and how they are dealt into optimizer steps.

Each round the current policy samples k responses per prompt, a reward model or rule scores them, and
the best and the worst response of each prompt become a (chosen, rejected) pair for the DPO loss
(Xiong et al. 2024, "Iterative Preference Learning from Human Feedback"; Dong et al. 2024, "RLHF
Workflow"; with k = 2 it is Online DPO, Guo et al. 2024, "Direct Language Model Alignment from
Online AI Feedback"). A prompt whose k scores are all equal states no preference and is skipped.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class BestWorstPairs(NamedTuple):
    """One entry per prompt g (all [G]): row indices into the [G*k] samples, and whether the pair counts."""

    chosen: torch.Tensor  # long: the best-scored response's row
    rejected: torch.Tensor  # long: the worst-scored response's row
    has_preference: torch.Tensor  # bool: best score > worst score (False: all k equal, the prompt is skipped)
    score_margin: torch.Tensor  # float: s[chosen] - s[rejected] (0 where there is no preference)


def best_worst_pairs(scores: torch.Tensor, group_size: int) -> BestWorstPairs:
    """Best vs worst response of each prompt, from scores [G*k] in prompt-major groups of k = ``group_size``
    (rows g*k .. g*k + k - 1 answer prompt g):

        chosen_g         = g*k + min{j : s[g*k + j] = max_i s[g*k + i]}    the first of equal maxima
        rejected_g       = g*k + max{j : s[g*k + j] = min_i s[g*k + i]}    the last of equal minima
        has_preference_g = max_i s[g*k + i] > min_i s[g*k + i]

    The tie-break (first best, last worst) is deterministic and keeps chosen != rejected even when all
    k scores are equal; such prompts have has_preference False and the caller trains nothing on them.
    """
    if group_size < 2:
        raise ValueError(f"best_worst_pairs: a pair needs at least 2 responses per prompt, got group size {group_size}")
    if scores.dim() != 1 or len(scores) % group_size:
        raise ValueError(f"best_worst_pairs: scores must be [G*{group_size}], got shape {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("best_worst_pairs: scores must be finite (a reward model returned nan or inf)")
    groups = scores.view(-1, group_size)
    best = groups.argmax(dim=1)  # torch.argmax returns the first of equal maxima
    last_worst = groups.flip(1).argmin(dim=1)  # the first minimum of the reversed group is the last one
    worst = group_size - 1 - last_worst
    offsets = torch.arange(len(groups)) * group_size
    margin = groups.max(dim=1).values - groups.min(dim=1).values
    return BestWorstPairs(offsets + best, offsets + worst, margin > 0, margin)


def deal_pairs(has_preference: torch.Tensor, num_minibatches: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """The round's G pair slots split into ``num_minibatches`` optimizer steps of G / M slots each (M = num_minibatches).

    The n slots with a preference are shuffled and dealt round-robin, so every step holds floor(n/M) or
    ceil(n/M) of them (a step holds none only when n < M); the slots without a preference, shuffled,
    fill each step up to G / M (they are masked out of the loss). Returns M index tensors.
    """
    total = len(has_preference)
    if num_minibatches < 1 or total % num_minibatches:
        raise ValueError(f"deal_pairs: {total} pair slots do not split into {num_minibatches} equal minibatches")
    size = total // num_minibatches
    pairs = torch.nonzero(has_preference).flatten()
    rest = torch.nonzero(~has_preference.bool()).flatten()
    pairs = pairs[torch.randperm(len(pairs), generator=generator)]
    rest = rest[torch.randperm(len(rest), generator=generator)]
    minibatches, used = [], 0
    for i in range(num_minibatches):
        dealt = pairs[i::num_minibatches]
        fill = size - len(dealt)
        minibatches.append(torch.cat([dealt, rest[used : used + fill]]))
        used += fill
    return minibatches
