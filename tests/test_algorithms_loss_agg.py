"""Loss aggregation over a whole optimizer step (rlhf.algorithms.loss_agg) against hand-computed values."""

import math

import pytest
import torch

from rlhf.algorithms.loss_agg import LOSS_AGG_MODES, agg_count, aggregate, row_share

NAN = float("nan")  # padding garbage that must not leak into any result
# Four rows of unequal length: right padding, a 1-token row, an empty row, left padding.
LOSS = torch.tensor(
    [
        [1.0, 2.0, 3.0, NAN],
        [4.0, NAN, NAN, NAN],
        [NAN, NAN, NAN, NAN],
        [NAN, NAN, 5.0, 6.0],
    ]
)
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]])
# Whole-batch values by hand: token sums per row 6, 4, -, 11; lengths 3, 1, 0, 2.
EXPECTED = {
    "token_mean": (1 + 2 + 3 + 4 + 5 + 6) / 6,  # 3.5
    "seq_mean_token_sum": (6 + 4 + 11) / 3,  # 7: the empty row is not counted
    "seq_mean_token_mean": (6 / 3 + 4 / 1 + 11 / 2) / 3,  # (2 + 4 + 5.5) / 3
}
COUNTS = {"token_mean": 6, "seq_mean_token_sum": 3, "seq_mean_token_mean": 3}


def close(actual, expected, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual).double(), torch.as_tensor(expected, dtype=torch.float64), atol=tol, rtol=0)


@pytest.mark.parametrize("mode", list(LOSS_AGG_MODES))
def test_whole_batch_by_hand(mode):
    close(aggregate(LOSS, MASK, mode), EXPECTED[mode])
    close(agg_count(MASK, mode), COUNTS[mode])
    assert agg_count(MASK, mode).dtype == torch.float64


@pytest.mark.parametrize("mode", list(LOSS_AGG_MODES))
def test_micro_batch_shares_add_up_to_the_step(mode):
    # Micro-batches [row 0, row 1] and [row 2, row 3]: each divided by the step's count, not its own.
    first, second = (LOSS[:2], MASK[:2]), (LOSS[2:], MASK[2:])
    count = agg_count(first[1], mode) + agg_count(second[1], mode)
    close(count, COUNTS[mode])
    close(aggregate(*first, mode, count) + aggregate(*second, mode, count), EXPECTED[mode])


def test_a_mean_per_micro_batch_would_differ():
    # What the loss was before: token means per micro-batch, averaged: ((6+4)/4 + 11/2) / 2 = 4, not 3.5.
    per_micro = (aggregate(LOSS[:2], MASK[:2], "token_mean") + aggregate(LOSS[2:], MASK[2:], "token_mean")) / 2
    close(per_micro, 4.0)
    assert not math.isclose(per_micro.item(), EXPECTED["token_mean"])


@pytest.mark.parametrize("mode", list(LOSS_AGG_MODES))
def test_gradient_of_the_shares_is_the_whole_batch_gradient(mode):
    x = torch.nan_to_num(LOSS, nan=7.0).requires_grad_()
    aggregate(x, MASK, mode).backward()
    whole = x.grad.clone()
    x.grad = None
    count = agg_count(MASK, mode)
    (aggregate(x[:1], MASK[:1], mode, count) + aggregate(x[1:], MASK[1:], mode, count)).backward()
    torch.testing.assert_close(x.grad, whole, atol=1e-7, rtol=0)
    # token_mean: 1/6 on each masked token; seq_mean_token_mean: 1/(3 * n_b); nothing on padding.
    if mode == "token_mean":
        close(whole[0], [1 / 6, 1 / 6, 1 / 6, 0])
    if mode == "seq_mean_token_mean":
        close(whole[1], [1 / 3, 0, 0, 0])
        close(whole[3], [0, 0, 1 / 6, 1 / 6])
    assert whole[2].abs().sum() == 0


def test_empty_step_gives_zero_and_low_precision_is_promoted():
    empty = torch.zeros(2, 3)
    for mode in LOSS_AGG_MODES:
        close(aggregate(LOSS[:2, :3], empty, mode), 0.0)
    # bf16 losses are aggregated in float32: 1/3 weights and sums would round in bf16
    out = aggregate(torch.ones(1, 3, dtype=torch.bfloat16), torch.ones(1, 3), "seq_mean_token_mean")
    assert out.dtype == torch.float32
    close(out, 1.0)


def test_row_share():
    close(row_share(torch.tensor([1.0, 2.0, 3.0])), 2.0)
    close(row_share(torch.tensor([1.0, 2.0, 3.0]), count=6), 1.0)  # a third of a 6-row step
    close(row_share(torch.zeros(0), count=0), 0.0)


def test_unknown_mode_names_the_valid_ones():
    with pytest.raises(ValueError, match="token_mean, seq_mean_token_sum, seq_mean_token_mean"):
        aggregate(LOSS, MASK, "token-mean")
