"""Advantage estimators and DAPO's sampling math against hand-computed values:
groups of unequal sizes (and a singleton), all-equal rewards, padding on both sides."""

import math

import pytest
import torch

from rlhf.algorithms.advantages import (
    ESTIMATORS,
    AdvantageInputs,
    dr_grpo_outcome,
    estimate_advantages,
    group_stats,
    grpo_outcome,
    rloo_outcome,
)
from rlhf.algorithms.dapo import fill_batch, informative_groups, overlong_penalty

# Groups of 3 (id 7), 2 (id 3) and 1 (id 9), not contiguous in the batch.
SCORES = torch.tensor([1.0, 2.0, 0.0, 5.0, 0.5, 4.0])
GROUPS = torch.tensor([7, 3, 7, 9, 7, 3])


def test_group_stats_unequal_sizes():
    mean, std, size = group_stats(SCORES, GROUPS)
    # group 7: [1, 0, 0.5] mean 0.5, unbiased var (0.25 + 0.25 + 0) / 2 = 0.25; group 3: [2, 4] mean 3, var 2
    torch.testing.assert_close(mean, torch.tensor([0.5, 3.0, 0.5, 5.0, 0.5, 3.0]))
    torch.testing.assert_close(std, torch.tensor([0.5, math.sqrt(2), 0.5, 0.0, 0.5, math.sqrt(2)]))
    torch.testing.assert_close(size, torch.tensor([3.0, 2.0, 3.0, 1.0, 3.0, 2.0]))


def test_grpo_divides_by_the_group_std():
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(grpo_outcome(SCORES, GROUPS), torch.tensor([1.0, -r, -1.0, 0.0, 0.0, r]), atol=1e-5, rtol=0)


def test_dr_grpo_only_centres():
    torch.testing.assert_close(dr_grpo_outcome(SCORES, GROUPS), torch.tensor([0.5, -1.0, -0.5, 0.0, 0.0, 1.0]))


def test_rloo_leaves_one_out():
    # group 7: 1 - (0 + 0.5)/2 = 0.75, 0 - 0.75 = -0.75, 0.5 - 0.5 = 0; group 3: 2 - 4, 4 - 2; singleton: 0
    torch.testing.assert_close(rloo_outcome(SCORES, GROUPS), torch.tensor([0.75, -2.0, -0.75, 0.0, 0.0, 2.0]))


@pytest.mark.parametrize("outcome", [grpo_outcome, dr_grpo_outcome, rloo_outcome])
def test_all_equal_rewards_give_zero_advantage(outcome):
    scores = torch.tensor([0.3, 0.3, 0.3, 1.0, 1.0])
    assert torch.equal(outcome(scores, torch.tensor([0, 0, 0, 1, 1])), torch.zeros(5))


def inputs(scores, mask, groups=None, kl=None, kl_coef=0.0, **kw):
    mask = torch.tensor(mask)
    return AdvantageInputs(scores=torch.tensor(scores), kl=torch.zeros(mask.shape) if kl is None else torch.tensor(kl),
                           mask=mask, group_ids=torch.tensor(groups if groups is not None else range(len(scores))),
                           kl_coef=kl_coef, **kw)


def test_outcome_advantage_fills_the_response_tokens_and_carries_the_kl_return_to_go():
    # Row 0 is padded on both sides, row 1 on the right. Group of 2: dr_grpo a = [+0.5, -0.5].
    x = inputs([1.0, 0.0], [[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]], groups=[0, 0],
               kl=[[9.0, 0.1, 0.2, 0.3, 9.0], [0.4, 0.2, 9.0, 9.0, 9.0]], kl_coef=0.5)
    advantages, returns = estimate_advantages("dr_grpo", x)
    assert returns is None
    # A_t = a - 0.5 * sum_{t' >= t} kl_t' over response tokens; 0 on padding (whatever the kl there)
    expected = torch.tensor([[0.0, 0.5 - 0.3, 0.5 - 0.25, 0.5 - 0.15, 0.0], [-0.5 - 0.3, -0.5 - 0.1, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(advantages, expected)
    no_kl, _ = estimate_advantages("dr_grpo", inputs([1.0, 0.0], [[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]], groups=[0, 0]))
    torch.testing.assert_close(no_kl, torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.0], [-0.5, -0.5, 0.0, 0.0, 0.0]]))


def test_reinforce_pp_normalises_returns_over_the_batch():
    # r = -kl_coef*kl + score on the last token; G = return-to-go: row 0 [-0.5 + 0.75, 0.75] = [0.25, 0.75], row 1 [-0.1]
    x = inputs([1.0, 0.0], [[1, 1, 0], [1, 0, 0]], kl=[[0.5, 0.25, 7.0], [0.1, 7.0, 7.0]], kl_coef=1.0)
    advantages, _ = estimate_advantages("reinforce_pp", x)
    # tokens [0.25, 0.75, -0.1]: mean 0.3, unbiased var 0.365 / 2
    std = math.sqrt(0.365 / 2)
    expected = torch.tensor([[-0.05 / std, 0.45 / std, 0.0], [-0.4 / std, 0.0, 0.0]])
    torch.testing.assert_close(advantages, expected, atol=1e-5, rtol=0)


def test_reinforce_pp_baseline_centres_on_the_group_first():
    # groups [1, 0] -> [0.5, -0.5], [3, 3] -> [0, 0]; one token each: mean 0, unbiased var 0.5 / 3
    x = inputs([1.0, 0.0, 3.0, 3.0], [[1], [1], [1], [1]], groups=[4, 4, 8, 8])
    advantages, _ = estimate_advantages("reinforce_pp_baseline", x)
    a = 0.5 / math.sqrt(0.5 / 3)
    torch.testing.assert_close(advantages, torch.tensor([[a], [-a], [0.0], [0.0]]), atol=1e-5, rtol=0)


def test_gae_through_the_table():
    # gamma = lambda = 1: A_t = G_t - V_t with G = [1, 1]; returns = G
    x = inputs([1.0], [[1, 1]], values=torch.tensor([[0.5, 0.2]]), gamma=1.0, lam=1.0)
    advantages, returns = estimate_advantages("gae", x)
    torch.testing.assert_close(advantages, torch.tensor([[0.5, 0.8]]))
    torch.testing.assert_close(returns, torch.tensor([[1.0, 1.0]]))
    with pytest.raises(ValueError, match="critic"):
        estimate_advantages("gae", inputs([1.0], [[1, 1]]))


def test_every_estimator_is_zero_on_padding():
    x = inputs([1.0, 0.0, 0.5, 0.2], [[0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0]], groups=[0, 0, 1, 1], kl_coef=0.1,
               values=torch.full((4, 3), 0.1))
    x.kl = torch.where(x.mask.bool(), torch.tensor(0.05), torch.tensor(float("nan")))  # garbage on padding
    for name in ESTIMATORS:
        advantages, _ = estimate_advantages(name, x)
        assert torch.equal(advantages[~x.mask.bool()], torch.zeros(int((~x.mask.bool()).sum()))), name
        assert torch.isfinite(advantages).all(), name


# -- DAPO --------------------------------------------------------------------------------------------------


def test_dynamic_sampling_keeps_groups_with_unequal_rewards():
    keep = informative_groups(torch.tensor([1.0, 1.0, 0.0, 0.5, 2.0]), torch.tensor([0, 0, 1, 1, 2]))
    assert keep.tolist() == [False, False, True, True, False]  # all-equal group and a singleton are dropped


def test_fill_batch_prefers_informative_groups_and_fills_when_short():
    groups = torch.tensor([5, 5, 2, 2, 9, 9])
    informative = torch.tensor([False, False, True, True, True, True])
    rows, filled = fill_batch(informative, groups, 2)
    assert rows.tolist() == [2, 3, 4, 5] and filled == 0
    rows, filled = fill_batch(informative, groups, 3)
    assert rows.tolist() == [2, 3, 4, 5, 0, 1] and filled == 1
    with pytest.raises(ValueError, match="3 groups sampled, 4 needed"):
        fill_batch(informative, groups, 4)


def test_overlong_penalty_is_linear_in_the_buffer():
    # L_max 10, L_cache 4: free up to 6 tokens, then -(|y| - 6) / 4, capped at -1; scaled by 0.5
    penalty = overlong_penalty(torch.tensor([5, 6, 7, 10, 12]), max_len=10, buffer=4, penalty=0.5)
    torch.testing.assert_close(penalty, torch.tensor([0.0, 0.0, -0.125, -0.5, -0.5]))
