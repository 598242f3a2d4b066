"""DPO-family losses against numbers worked out by hand with math.log / math.exp."""

import math

import pytest
import torch

from rlhf.algorithms.dpo import dpo_loss

# One pair: pc = -1.0, pr = -3.0, rc = -2.0, rr = -2.5
# logits = (pc - pr) - (rc - rr) = 2.0 - 0.5 = 1.5 ; with beta = 0.1, beta * logits = 0.15
PAIR = dict(
    policy_chosen_logps=torch.tensor([-1.0]),
    policy_rejected_logps=torch.tensor([-3.0]),
    ref_chosen_logps=torch.tensor([-2.0]),
    ref_rejected_logps=torch.tensor([-2.5]),
)


def neg_logsigmoid(x):
    """-log sigmoid(x) = log(1 + exp(-x))"""
    return math.log(1 + math.exp(-x))


def loss_of(**kwargs):
    losses, _, _ = dpo_loss(**PAIR, **kwargs)
    return losses.item()


def test_sigmoid_loss():
    assert loss_of(beta=0.1) == pytest.approx(neg_logsigmoid(0.15), abs=1e-6)
    assert loss_of(beta=0.1) == pytest.approx(0.620957, abs=1e-6)


def test_sigmoid_loss_with_label_smoothing_is_conservative_dpo():
    expected = 0.9 * neg_logsigmoid(0.15) + 0.1 * neg_logsigmoid(-0.15)
    assert loss_of(beta=0.1, label_smoothing=0.1) == pytest.approx(expected, abs=1e-6)


def test_ipo_loss():
    # (1.5 - 1 / (2 * 0.1))^2 = (1.5 - 5)^2
    assert loss_of(beta=0.1, loss_type="ipo") == pytest.approx(12.25, abs=1e-5)


def test_hinge_loss():
    assert loss_of(beta=0.1, loss_type="hinge") == pytest.approx(1 - 0.15, abs=1e-6)
    assert loss_of(beta=1.0, loss_type="hinge") == 0.0  # 1 - 1.5 < 0


def test_robust_loss():
    # (-log s(0.15) * 0.9 + log s(-0.15) * 0.1) / (1 - 0.2)
    expected = (0.9 * neg_logsigmoid(0.15) - 0.1 * neg_logsigmoid(-0.15)) / 0.8
    assert loss_of(beta=0.1, loss_type="robust", label_smoothing=0.1) == pytest.approx(expected, abs=1e-6)
    # without smoothing it is plain DPO
    assert loss_of(beta=0.1, loss_type="robust") == pytest.approx(neg_logsigmoid(0.15), abs=1e-6)


def test_implicit_rewards_are_detached_and_scaled_by_beta():
    policy_chosen = torch.tensor([-1.0], requires_grad=True)
    policy_rejected = torch.tensor([-3.0], requires_grad=True)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen, policy_rejected, PAIR["ref_chosen_logps"], PAIR["ref_rejected_logps"], beta=0.1
    )
    assert chosen_rewards.item() == pytest.approx(0.1 * (-1.0 + 2.0))
    assert rejected_rewards.item() == pytest.approx(0.1 * (-3.0 + 2.5))
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad
    losses.sum().backward()
    # d/dpc of -log s(beta * logits) = -beta * s(-beta * logits)
    expected_grad = -0.1 / (1 + math.exp(0.15))
    assert policy_chosen.grad.item() == pytest.approx(expected_grad, abs=1e-6)
    assert policy_rejected.grad.item() == pytest.approx(-expected_grad, abs=1e-6)


def test_losses_are_per_pair():
    losses, chosen, rejected = dpo_loss(
        torch.tensor([-1.0, 0.0]),
        torch.tensor([-3.0, 0.0]),
        torch.tensor([-2.0, 0.0]),
        torch.tensor([-2.5, 0.0]),
        beta=0.1,
    )
    assert losses.shape == chosen.shape == rejected.shape == (2,)
    assert losses[1].item() == pytest.approx(math.log(2), abs=1e-6)  # logits 0: -log(1/2)


def test_unknown_loss_type_lists_valid_ones():
    with pytest.raises(ValueError, match="sigmoid, ipo, hinge, robust"):
        loss_of(beta=0.1, loss_type="kto")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(beta=0.1, loss_type="robust", label_smoothing=0.5),
        dict(beta=0.1, loss_type="sigmoid", label_smoothing=-0.1),
        dict(beta=0.1, loss_type="ipo", label_smoothing=0.1),
        dict(beta=0.0),
    ],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        loss_of(**kwargs)


# --- IPO on length-averaged log-probabilities ----------------------------------------------------


def _pair_loss_from_tokens(token_logps: dict, masks: dict, loss_type: str) -> float:
    from rlhf.algorithms.dpo import preference_logps
    from rlhf.algorithms.logprobs import sequence_logprobs

    logps = {k: preference_logps(sequence_logprobs(token_logps[k], masks[k]), masks[k], loss_type) for k in token_logps}
    losses, _, _ = dpo_loss(logps["pc"], logps["pr"], logps["rc"], logps["rr"], beta=0.1, loss_type=loss_type)
    return losses.item()


def test_ipo_is_unchanged_when_every_response_is_repeated_twice():
    # Per-token logprobs of chosen (3 tokens) and rejected (2 tokens, 1 padding) under policy and reference.
    tokens = {
        "pc": torch.tensor([[-0.5, -1.0, -1.5]]), "rc": torch.tensor([[-1.0, -1.0, -2.5]]),
        "pr": torch.tensor([[-2.0, -3.0, 0.0]]), "rr": torch.tensor([[-1.5, -2.0, 0.0]]),
    }
    masks = {"pc": torch.tensor([[1, 1, 1]]), "rc": torch.tensor([[1, 1, 1]]),
             "pr": torch.tensor([[1, 1, 0]]), "rr": torch.tensor([[1, 1, 0]])}
    doubled_tokens = {k: torch.cat([v[:, masks[k][0].bool()]] * 2, dim=1) for k, v in tokens.items()}
    doubled_masks = {k: torch.ones_like(v, dtype=torch.long) for k, v in doubled_tokens.items()}

    # By hand: averages pc = -1.0, rc = -1.5, pr = -2.5, rr = -1.75; logits = (-1 + 2.5) - (-1.5 + 1.75) = 1.25
    expected = (1.25 - 1 / (2 * 0.1)) ** 2
    assert _pair_loss_from_tokens(tokens, masks, "ipo") == pytest.approx(expected, abs=1e-5)
    assert _pair_loss_from_tokens(doubled_tokens, doubled_masks, "ipo") == pytest.approx(expected, abs=1e-5)
    # The summed log-probabilities of sigmoid DPO do change: the repetition is not a no-op.
    assert _pair_loss_from_tokens(tokens, masks, "sigmoid") != pytest.approx(
        _pair_loss_from_tokens(doubled_tokens, doubled_masks, "sigmoid"), abs=1e-3)


def test_preference_logps_sums_or_averages_by_loss_type():
    from rlhf.algorithms.dpo import preference_logps

    summed, mask = torch.tensor([-6.0, -3.0]), torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])
    assert preference_logps(summed, mask, "ipo").tolist() == [-2.0, -3.0]
    for loss_type in ("sigmoid", "hinge", "robust"):
        assert preference_logps(summed, mask, loss_type).tolist() == [-6.0, -3.0]
    with pytest.raises(ValueError, match="unknown DPO loss_type 'kto'"):
        preference_logps(summed, mask, "kto")
