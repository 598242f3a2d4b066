"""Masked reductions, logprobs and entropy, SFT loss and reward-model loss against hand-computed values."""

import math

import pytest
import torch

from rlhf.algorithms.logprobs import entropy_from_logits, logprobs_from_logits, sequence_logprobs
from rlhf.algorithms.masked import masked_mean, masked_sum, masked_var, whiten
from rlhf.algorithms.reward import pairwise_accuracy, pairwise_loss
from rlhf.algorithms.sft import sft_loss


def close(actual, expected, tol=1e-6):
    """Elementwise |actual - expected| <= tol, compared in float64."""
    actual = torch.as_tensor(actual).detach().double()
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float64), atol=tol, rtol=0)


# Masked entries: 2, 3 (row 0, padding on both sides) and 5 (row 1, right padding).
X = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
MASK = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]])


# --- masked reductions -------------------------------------------------------------------------


def test_masked_sum_and_mean():
    close(masked_sum(X, MASK), 10.0)
    close(masked_sum(X, MASK, dim=-1), [5.0, 5.0])
    close(masked_mean(X, MASK), 10.0 / 3)
    close(masked_mean(X, MASK, dim=-1), [2.5, 5.0])
    close(masked_mean(X, MASK.bool()), 10.0 / 3)  # bool masks work too


def test_masked_mean_of_empty_mask_is_zero():
    close(masked_mean(X, torch.zeros_like(MASK)), 0.0)
    close(masked_mean(X, torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]), dim=-1), [1.5, 0.0])


def test_masked_mean_ignores_nan_and_inf_in_padding():
    x = torch.tensor([[float("nan"), 1.0, 3.0, float("-inf")]])
    close(masked_mean(x, torch.tensor([[0, 1, 1, 0]])), 2.0)


def test_masked_var():
    # values 2, 3, 5: mean 10/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9
    close(masked_var(X, MASK), (42 / 9) / 2)  # 7/3
    close(masked_var(X, MASK, unbiased=False), (42 / 9) / 3)  # 14/9
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(X, torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]]))


def test_whiten():
    std = math.sqrt(7 / 3 + 1e-8)
    expected = [[0.0, (2 - 10 / 3) / std, (3 - 10 / 3) / std, 0.0], [(5 - 10 / 3) / std, 0.0, 0.0, 0.0]]
    close(whiten(X, MASK), expected)
    close(whiten(X, MASK)[0, 1], -0.8728715)
    shifted = [[0.0, expected[0][1] + 10 / 3, expected[0][2] + 10 / 3, 0.0], [expected[1][0] + 10 / 3, 0.0, 0.0, 0.0]]
    close(whiten(X, MASK, shift_mean=False), shifted)


# --- logprobs and entropy ----------------------------------------------------------------------

# softmax(log([1, 2, 1])) = [0.25, 0.5, 0.25]
LOGITS = torch.log(torch.tensor([[[1.0, 2.0, 1.0], [1.0, 2.0, 1.0]]]))
LABELS = torch.tensor([[1, 0]])


def test_logprobs_from_logits():
    close(logprobs_from_logits(LOGITS, LABELS), [[math.log(0.5), math.log(0.25)]])
    # logits are only defined up to a constant per token
    close(logprobs_from_logits(LOGITS + 7.0, LABELS), [[math.log(0.5), math.log(0.25)]])


def test_logprobs_with_temperature():
    # logits / 2 = log(sqrt([1, 2, 1])): p = [1, sqrt2, 1] / (2 + sqrt2)
    norm = 2 + math.sqrt(2)
    close(logprobs_from_logits(LOGITS, LABELS, temperature=2.0), [[math.log(math.sqrt(2) / norm), math.log(1 / norm)]])


def test_logprobs_in_bfloat16_match_float32():
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(1))
    half = logprobs_from_logits(logits.bfloat16(), labels)
    assert half.dtype == torch.float32
    close(half, logprobs_from_logits(logits.bfloat16().float(), labels))


def test_bfloat16_logits_with_temperature_match_float64():
    # bf16 logits of a 32k vocabulary at T=0.7: dividing in bf16 (before the upcast) rounds every z
    # to 8 significant bits and moves logprobs by ~0.1 nats; dividing after the upcast stays exact.
    gen = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(2, 6, 32000, generator=gen)).bfloat16()
    labels = torch.randint(0, 32000, (2, 6), generator=gen)
    reference = torch.log_softmax(logits.double() / 0.7, dim=-1)
    expected_logps = reference.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    expected_entropy = -(reference.exp() * reference).sum(-1)
    close(logprobs_from_logits(logits, labels, temperature=0.7), expected_logps, tol=1e-3)
    close(entropy_from_logits(logits, temperature=0.7), expected_entropy, tol=1e-3)
    divided_in_bf16 = torch.log_softmax((logits / 0.7).double(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert (divided_in_bf16 - expected_logps).abs().max() > 1e-2  # the error this guards against


def test_entropy_from_logits():
    # -(0.25 ln 0.25 * 2 + 0.5 ln 0.5) = 1.5 ln 2
    close(entropy_from_logits(LOGITS), [[1.5 * math.log(2), 1.5 * math.log(2)]])
    # uniform over 3 tokens: ln 3; any temperature keeps it uniform
    close(entropy_from_logits(torch.zeros(1, 1, 3), temperature=0.7), [[math.log(3)]])


def test_sequence_logprobs_sums_masked_tokens():
    token_logps = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, float("-inf")]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    close(sequence_logprobs(token_logps, mask), [-5.0, -0.75])


# --- SFT ---------------------------------------------------------------------------------------


def sft_batch():
    # logits are log-probabilities, so nll = -log p[label]
    probs = torch.tensor(
        [
            [[0.5, 0.25, 0.25], [0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]],
            [[0.125, 0.375, 0.5], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]],
        ]
    )
    labels = torch.tensor([[0, 1, 2], [0, 0, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    return probs.log(), labels, mask


def test_sft_loss_token_mean_vs_seq_mean():
    logits, labels, mask = sft_batch()
    # nll: row 0 = [ln 2, ln 4], row 1 = [ln 8]
    close(sft_loss(logits, labels, mask), (math.log(2) + math.log(4) + math.log(8)) / 3)  # 2 ln 2
    seq_mean = ((math.log(2) + math.log(4)) / 2 + math.log(8)) / 2  # 2.25 ln 2
    close(sft_loss(logits, labels, mask, loss_agg_mode="seq_mean_token_mean"), seq_mean)
    close(sft_loss(logits, labels, mask, loss_agg_mode="seq_mean_token_sum"), (math.log(2) + math.log(4) + math.log(8)) / 2)
    # a share of a larger step: the same sums over that step's count of 6 tokens
    close(sft_loss(logits, labels, mask, count=6), (math.log(2) + math.log(4) + math.log(8)) / 6)


def test_sft_loss_gradient_only_on_masked_tokens():
    logits, labels, mask = sft_batch()
    logits.requires_grad_()
    sft_loss(logits, labels, mask).backward()
    assert logits.grad[0, 2].abs().sum() == 0 and logits.grad[1, 1:].abs().sum() == 0
    # d nll / d logits = softmax - onehot, divided by the 3 tokens: for row 0 token 0, (p - e0) / 3
    close(logits.grad[0, 0], [(0.5 - 1) / 3, 0.25 / 3, 0.25 / 3])


def test_sft_loss_unknown_aggregation():
    logits, labels, mask = sft_batch()
    with pytest.raises(ValueError, match="token_mean, seq_mean_token_sum, seq_mean_token_mean"):
        sft_loss(logits, labels, mask, loss_agg_mode="mean")


# --- reward model ------------------------------------------------------------------------------


def test_pairwise_loss():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # -log sigmoid(d) = log(1 + exp(-d)) for d = 1 and -1
    close(pairwise_loss(chosen, rejected), [math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))])


def test_pairwise_loss_with_margin():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # d - margin = 1 - 0.5 and -1 - 0
    expected = [math.log(1 + math.exp(-0.5)), math.log(1 + math.exp(1))]
    close(pairwise_loss(chosen, rejected, margin=torch.tensor([0.5, 0.0])), expected)


def test_pairwise_accuracy_counts_ties_as_wrong():
    accuracy = pairwise_accuracy(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 1.0]))
    assert accuracy.dtype == torch.float32
    close(accuracy, 1 / 3)
