"""KTO's loss, reference point and metrics against numbers worked out by hand with math.exp, and its KL pairing."""

import math

import pytest
import torch

from rlhf.algorithms.kto import kto_counts, kto_loss, kto_reference_point, kto_stats, weight_ratio_warning
from rlhf.data.collate import collate_sft, kl_partners, mismatched_examples
from rlhf.data.tokenize import TokenizedSFT


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# Two examples: a desirable one with log-ratio r = -1.0 - (-2.0) = 1.0, an undesirable one with
# r = -3.0 - (-2.5) = -0.5; z_ref = 0.2, beta = 0.1.
POLICY = torch.tensor([-1.0, -3.0])
REF = torch.tensor([-2.0, -2.5])
DESIRABLE = torch.tensor([True, False])


def test_reference_point_is_the_clamped_mean_log_ratio_of_the_mismatched_pairs():
    # mean of (-4 - -5, -6 - -5.6) = mean(1.0, -0.4) = 0.3
    z = kto_reference_point(torch.tensor([-4.0, -6.0]), torch.tensor([-5.0, -5.6]))
    assert z.item() == pytest.approx(0.3) and z.dim() == 0
    # a negative mean is clamped at 0: mean(-1.0, -0.4) = -0.7 -> 0
    assert kto_reference_point(torch.tensor([-6.0, -6.0]), torch.tensor([-5.0, -5.6])).item() == 0.0
    policy = torch.tensor([-4.0, -6.0], requires_grad=True)
    assert not kto_reference_point(policy, torch.tensor([-5.0, -5.6])).requires_grad


def test_losses_follow_the_paper_for_each_label():
    losses, rewards = kto_loss(POLICY, REF, DESIRABLE, 0.2, beta=0.1)
    # desirable: 1 - s(0.1 * (1.0 - 0.2)) = 1 - s(0.08); undesirable: 1 - s(0.1 * (0.2 - -0.5)) = 1 - s(0.07)
    assert losses.tolist() == pytest.approx([1 - sigmoid(0.08), 1 - sigmoid(0.07)], abs=1e-7)
    assert losses.tolist() == pytest.approx([0.480011, 0.482507], abs=1e-6)
    assert rewards.tolist() == pytest.approx([0.1, -0.05])


def test_weights_scale_each_label():
    losses, _ = kto_loss(POLICY, REF, DESIRABLE, 0.2, beta=0.1, desirable_weight=2.0, undesirable_weight=0.5)
    assert losses.tolist() == pytest.approx([2 * (1 - sigmoid(0.08)), 0.5 * (1 - sigmoid(0.07))], abs=1e-7)


def test_gradients_push_desirable_up_and_undesirable_down():
    policy = POLICY.clone().requires_grad_(True)
    losses, rewards = kto_loss(policy, REF, DESIRABLE, torch.tensor(0.2), beta=0.1)
    assert not rewards.requires_grad
    losses.sum().backward()
    # d/dr (1 - s(b(r - z))) = -b s(x)(1 - s(x)); d/dr (1 - s(b(z - r))) = +b s(x)(1 - s(x))
    assert policy.grad.tolist() == pytest.approx(
        [-0.1 * sigmoid(0.08) * (1 - sigmoid(0.08)), 0.1 * sigmoid(0.07) * (1 - sigmoid(0.07))], abs=1e-7)


def test_stats_are_trl_means_per_label_and_add_up_over_a_split():
    losses, rewards = kto_loss(torch.tensor([-1.0, -3.0, -2.0]), torch.tensor([-2.0, -2.5, -2.0]),
                               torch.tensor([True, False, True]), 0.0, beta=0.1)
    whole = kto_stats(losses, rewards, torch.tensor([-1.0, -3.0, -2.0]), torch.tensor([True, False, True]))
    assert whole["rewards/chosen"].item() == pytest.approx((0.1 + 0.0) / 2)
    assert whole["rewards/rejected"].item() == pytest.approx(-0.05)
    assert whole["rewards/margins"].item() == pytest.approx(0.05 + 0.05)
    assert whole["logps/chosen"].item() == pytest.approx(-1.5) and whole["logps/rejected"].item() == pytest.approx(-3.0)
    assert whole["loss"].item() == pytest.approx(losses.mean().item())
    # The same numbers as shares of two micro-batches (the first has no undesirable example).
    counts = {k: float(v) for k, v in kto_counts(torch.tensor([True, False, True])).items()}
    assert counts == {"rows": 3.0, "chosen": 2.0, "rejected": 1.0}
    logps = torch.tensor([-1.0, -3.0, -2.0])
    parts = [kto_stats(losses[s], rewards[s], logps[s], torch.tensor([True, False, True])[s], counts)
             for s in (slice(0, 1), slice(1, 3))]
    for key, value in whole.items():
        assert sum(p[key].item() for p in parts) == pytest.approx(value.item()), key


def test_stats_leave_out_a_label_with_no_example():
    losses, rewards = kto_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([True]), 0.0, beta=0.1)
    stats = kto_stats(losses, rewards, torch.tensor([-1.0]), torch.tensor([True]))
    assert set(stats) == {"loss", "rewards/chosen", "logps/chosen"}


def test_weight_ratio_warning_outside_the_papers_range():
    assert weight_ratio_warning(100, 100, 1.0, 1.0) is None  # ratio 1
    assert weight_ratio_warning(130, 100, 1.0, 1.0) is None  # 1.3 <= 4/3
    assert "0.500" in weight_ratio_warning(50, 100, 1.0, 1.0)  # too few desirable: raise desirable_weight to [2, 2.67]
    assert "[2, 2.67]" in weight_ratio_warning(50, 100, 1.0, 1.0)
    assert weight_ratio_warning(50, 100, 2.0, 1.0) is None


def test_kl_partners_shift_past_runs_of_one_prompt():
    # split pairs: (p0 desirable, p0 undesirable, p1 ..., p2 ...): shift 1 would meet its own prompt, shift 2 does not
    prompts = [[0], [0], [1], [1], [2], [2]]
    assert kl_partners(prompts) == [2, 3, 4, 5, 0, 1]
    assert kl_partners([[0], [1], [2]]) == [1, 2, 0]


def test_kl_partners_with_one_prompt_falls_back_with_a_warning(caplog):
    assert kl_partners([[7], [7], [7]]) == [1, 2, 0]
    assert "share their prompt" in caplog.text


def test_mismatched_rows_are_own_prompt_and_partners_completion():
    a, b = TokenizedSFT([1, 2], [3, 4]), TokenizedSFT([5], [6])
    rows = collate_sft(mismatched_examples([a, b], [b, a]), pad_id=0)
    assert rows["input_ids"].tolist() == [[1, 2, 6], [5, 3, 4]]
    assert rows["loss_mask"].tolist() == [[0, 0, 1], [0, 1, 1]]
