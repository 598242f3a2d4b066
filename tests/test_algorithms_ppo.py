"""PPO math against hand-computed values: KL estimators, reward shaping, GAE, value loss, KL controllers."""

import math

import pytest
import torch

from rlhf.algorithms.ppo import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    kl_estimate,
    shape_rewards,
    value_loss,
    whiten,
)


def close(actual, expected, tol=1e-6):
    """Elementwise |actual - expected| <= tol, compared in float64."""
    actual = torch.as_tensor(actual).detach().double()
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float64), atol=tol, rtol=0)


# --- KL estimators -----------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    # d = logp - ref_logp = 0.5 and -1.0
    logp = torch.tensor([-1.0, -2.0])
    ref_logp = torch.tensor([-1.5, -1.0])
    close(kl_estimate(logp, ref_logp, "k1"), [0.5, -1.0])
    close(kl_estimate(logp, ref_logp, "k2"), [0.125, 0.5])
    # k3 = exp(-d) + d - 1
    close(kl_estimate(logp, ref_logp, "k3"), [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1])
    close(kl_estimate(logp, ref_logp, "k3"), [0.10653066, 0.71828183])


def test_kl_estimator_unknown_kind_names_valid_ones():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


# --- reward shaping ----------------------------------------------------------------------------


def test_shape_rewards_kl_everywhere_score_on_last_token():
    scores = torch.tensor([2.0, -1.0, 5.0])
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    rewards = shape_rewards(scores, kl, mask, kl_coef=0.5)
    expected = [
        [0.0, -0.1, -0.15 + 2.0, 0.0],  # left and right padding: score on position 2
        [-0.25, -0.3, -0.35, -0.4 - 1.0],
        [0.0, 0.0, 0.0, 0.0],  # empty response: nothing, score dropped
    ]
    close(rewards, expected)


def test_shape_rewards_single_token_at_position_zero():
    rewards = shape_rewards(torch.tensor([3.0]), torch.tensor([[0.2, 9.0]]), torch.tensor([[1, 0]]), kl_coef=0.1)
    close(rewards, [[-0.02 + 3.0, 0.0]])


# --- GAE ---------------------------------------------------------------------------------------


def test_gae_three_tokens_padding_on_both_sides():
    gamma, lam = 0.9, 0.8
    pad = 1000.0  # garbage that must not leak into the response tokens
    rewards = torch.tensor([[pad, 1.0, 0.0, 2.0, pad]])
    values = torch.tensor([[pad, 0.5, 1.0, 1.5, pad]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    # t=3: delta = 2 + 0.9*0 - 1.5 = 0.5                 A = 0.5
    # t=2: delta = 0 + 0.9*1.5 - 1.0 = 0.35              A = 0.35 + 0.72*0.5  = 0.71
    # t=1: delta = 1 + 0.9*1.0 - 0.5 = 1.4               A = 1.4  + 0.72*0.71 = 1.9112
    close(advantages, [[0.0, 1.9112, 0.71, 0.5, 0.0]])
    close(returns, [[0.0, 1.9112 + 0.5, 0.71 + 1.0, 0.5 + 1.5, 0.0]])


def test_gae_skips_a_hole_inside_the_response():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[0.0, 99.0, 1.0]])
    values = torch.tensor([[0.2, float("nan"), 0.5]])
    mask = torch.tensor([[1, 0, 1]])
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    # t=2: delta = 1 - 0.5 = 0.5, A = 0.5
    # t=0: next is t=2: delta = 0 + 0.9*0.5 - 0.2 = 0.25, A = 0.25 + 0.72*0.5 = 0.61
    close(advantages, [[0.61, 0.0, 0.5]])
    close(returns, [[0.81, 0.0, 1.0]])


def test_gae_rows_are_independent_and_detached():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    rewards = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    mask = torch.tensor([[1, 1], [0, 1]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # row 0: A1 = 1 - 2 = -1, A0 = 0 + 2 - 1 + (-1) = 0 ; row 1: A1 = 0 - 4 = -4
    close(advantages, [[0.0, -1.0], [0.0, -4.0]])
    close(returns, [[1.0, 1.0], [0.0, 0.0]])
    assert not advantages.requires_grad and not returns.requires_grad


# --- value loss and explained variance ---------------------------------------------------------


def value_batch():
    #            clipped case   equal case   unclipped larger   padding
    values = torch.tensor([[1.0, 2.0, 1.0, 9.0]], requires_grad=True)
    old_values = torch.tensor([[0.0, 2.0, 0.0, -9.0]])
    returns = torch.tensor([[2.0, 3.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    return values, old_values, returns, mask


def test_value_loss_clipped_by_hand():
    values, old_values, returns, mask = value_batch()
    loss, stats = value_loss(values, old_values, returns, mask, clip=0.5)
    # token 0: (1-2)^2 = 1 vs (0+0.5-2)^2 = 2.25 -> 2.25 (clipped term chosen)
    # token 1: (2-3)^2 = 1 vs (2+0-3)^2 = 1     -> 1
    # token 2: (1-0)^2 = 1 vs (0+0.5-0)^2 = 0.25 -> 1
    close(loss, 0.5 * (2.25 + 1 + 1) / 3)
    close(stats["clipfrac"], 1 / 3)
    loss.backward()
    # d/dv of 0.5*(v-R)^2/3 = (v-R)/3 on unclipped tokens; 0 where the clipped term is chosen
    close(values.grad, [[0.0, -1 / 3, 1 / 3, 0.0]])


def test_value_loss_unclipped():
    values, old_values, returns, mask = value_batch()
    loss, stats = value_loss(values, old_values, returns, mask, clip=None)
    close(loss, 0.5 * (1 + 1 + 1) / 3)
    close(stats["clipfrac"], 0.0)


def test_explained_variance_by_hand():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, 100.0]])
    values = torch.tensor([[1.0, 2.0, 3.0, 3.0, -100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    # R - V = [0, 0, 0, 1]: var = 0.25 - 0.0625 = 0.1875 ; var(R) = 7.5 - 6.25 = 1.25
    close(explained_variance(values, returns, mask), 1 - 0.1875 / 1.25)  # 0.85


def test_explained_variance_undefined_for_constant_returns():
    returns = torch.ones(1, 3)
    assert torch.isnan(explained_variance(torch.zeros(1, 3), returns, torch.ones(1, 3)))


def test_whiten_is_reexported_from_ppo():
    from rlhf.algorithms import masked

    assert whiten is masked.whiten


# --- KL controllers ----------------------------------------------------------------------------


def test_adaptive_kl_after_one_update_above_and_below_target():
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    controller.update(current_kl=9.0, n_steps=256)
    # error = clip(9/6 - 1 = 0.5, -0.2, 0.2) = 0.2 ; mult = 1 + 0.2*256/10000 = 1.00512
    assert controller.value == pytest.approx(0.100512, abs=1e-12)
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    controller.update(current_kl=5.4, n_steps=256)
    # error = 5.4/6 - 1 = -0.1 ; mult = 1 - 0.1*256/10000 = 0.99744
    assert controller.value == pytest.approx(0.099744, abs=1e-12)


def test_adaptive_kl_accepts_a_tensor_kl():
    controller = AdaptiveKLController(init_kl_coef=0.2, target=1.0, horizon=100)
    controller.update(torch.tensor(0.0), n_steps=10)
    # error = clip(-1, -0.2, 0.2) = -0.2 ; mult = 1 - 0.2*10/100 = 0.98
    assert controller.value == pytest.approx(0.196)


def test_adaptive_kl_rejects_nonpositive_target():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(init_kl_coef=0.1, target=0.0, horizon=10)


def test_kl_controllers_resume_from_state_dict():
    trained = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    trained.update(current_kl=9.0, n_steps=256)
    resumed = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    resumed.load_state_dict(trained.state_dict())
    assert resumed.value == trained.value == pytest.approx(0.100512)

    fixed = FixedKLController(0.05)
    fixed.update(current_kl=100.0, n_steps=1000)
    assert fixed.value == 0.05
    restored = FixedKLController(0.0)
    restored.load_state_dict(fixed.state_dict())
    assert restored.value == 0.05
