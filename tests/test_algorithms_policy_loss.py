"""The policy-gradient loss (rlhf.algorithms.policy_loss) against hand-computed values: clipping (symmetric,
clip-higher, dual clip), the GSPO sequence ratio, truncated importance sampling, entropy and KL loss terms."""

import math

import pytest
import torch

from rlhf.algorithms.loss_agg import agg_count
from rlhf.algorithms.policy_loss import PolicyObjective, policy_loss, truncated_is_weights


def close(actual, expected, tol=1e-6):
    """Elementwise |actual - expected| <= tol, compared in float64."""
    actual = torch.as_tensor(actual).detach().double()
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float64), atol=tol, rtol=0)


# --- policy loss -------------------------------------------------------------------------------

# Four tokens, clip_eps = 0.2:
#   ratio 1.0, A = +1 -> min(1.0, 1.0)   = 1.0   not clipped
#   ratio 1.5, A = +1 -> min(1.5, 1.2)   = 1.2   CLIPPED
#   ratio 0.5, A = +1 -> min(0.5, 0.8)   = 0.5   not clipped
#   ratio 1.1, A = -2 -> min(-2.2, -2.2) = -2.2  not clipped (inside the range)
RATIOS = [1.0, 1.5, 0.5, 1.1]
ADVANTAGES = [1.0, 1.0, 1.0, -2.0]


def four_token_batch():
    old_logp = torch.tensor([[-1.0, -2.0, -0.5, -3.0, 7.0]])  # last position is padding
    logp = old_logp + torch.log(torch.tensor([RATIOS + [50.0]]))
    advantages = torch.tensor([ADVANTAGES + [100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    return logp, old_logp, advantages, mask


def test_policy_loss_one_of_four_tokens_clips():
    logp, old_logp, advantages, mask = four_token_batch()
    loss, stats = policy_loss(logp, old_logp, advantages, mask, clip_eps=0.2)
    close(loss, -(1.0 + 1.2 + 0.5 - 2.2) / 4)  # = -0.125
    close(stats["clipfrac"], 0.25)
    expected_kl = 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 4
    close(stats["approx_kl"], expected_kl)
    assert stats["clipfrac"].dtype.is_floating_point and stats["approx_kl"].dtype.is_floating_point


def test_policy_loss_gradient_is_zero_on_clipped_tokens():
    # token 1: ratio 1.5, A=+1 clipped above; token 4: ratio 0.5, A=-1 clipped below
    ratios = torch.tensor([[1.0, 1.5, 1.1, 0.5]])
    old_logp = torch.zeros(1, 4)
    logp = torch.log(ratios).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -2.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = policy_loss(logp, old_logp, advantages, mask, clip_eps=0.2)
    loss.backward()
    # d(-ratio*A/4)/dlogp = -ratio*A/4 on unclipped tokens
    close(logp.grad, [[-0.25, 0.0, 0.55, 0.0]])
    close(stats["clipfrac"], 0.5)


def test_policy_loss_clip_eps_high_widens_only_the_upper_bound():
    logp = torch.log(torch.tensor([[1.25, 0.75]]))
    old_logp = torch.zeros(1, 2)
    advantages = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    symmetric, stats = policy_loss(logp, old_logp, advantages, mask, clip_eps=0.2)
    # 1.25 clipped to 1.2 -> -1.2 ; 0.75 with A=-1: min(-0.75, -0.8) = -0.8 clipped -> 0.8
    close(symmetric, (-1.2 + 0.8) / 2)
    close(stats["clipfrac"], 1.0)
    asymmetric, stats = policy_loss(logp, old_logp, advantages, mask, clip_eps=0.2, clip_eps_high=0.28)
    # 1.25 < 1.28 now unclipped -> -1.25 ; the lower bound is unchanged
    close(asymmetric, (-1.25 + 0.8) / 2)
    close(stats["clipfrac"], 0.5)


def test_policy_loss_aggregation_modes_differ():
    # ratio 1 everywhere, so the per-token loss is -A: [[1, 2, 3], [4, pad, pad]]
    logp = torch.zeros(2, 3)
    advantages = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, 50.0, 50.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])

    def loss(mode, count=None):
        return policy_loss(logp, logp, advantages, mask, clip_eps=0.2, loss_agg_mode=mode, count=count)[0]

    close(loss("token_mean"), (1 + 2 + 3 + 4) / 4)  # 2.5
    close(loss("seq_mean_token_sum"), (6 + 4) / 2)  # 5.0
    close(loss("seq_mean_token_mean"), ((1 + 2 + 3) / 3 + 4 / 1) / 2)  # 3.0
    close(loss("token_mean", count=8), 10 / 8)  # a share of a step with 8 tokens


def test_policy_loss_seq_mean_ignores_empty_sequences():
    logp = torch.zeros(2, 2)
    advantages = torch.tensor([[-1.0, -3.0], [-9.0, -9.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    loss, _ = policy_loss(logp, logp, advantages, mask, clip_eps=0.2, loss_agg_mode="seq_mean_token_mean")
    close(loss, 2.0)


def test_policy_loss_unknown_names():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="token_mean, seq_mean_token_sum"):
        policy_loss(x, x, x, torch.ones(1, 2), clip_eps=0.2, loss_agg_mode="sum")
    with pytest.raises(ValueError, match="valid: ppo, gspo"):
        policy_loss(x, x, x, torch.ones(1, 2), clip_eps=0.2, loss_type="grpo")
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        policy_loss(x, x, x, torch.ones(1, 2), clip_eps=0.2, clip_ratio_c=1.0)


def test_policy_loss_clip_eps_low_widens_only_the_lower_bound():
    logp = torch.log(torch.tensor([[1.25, 0.75]]))
    old_logp = torch.zeros(1, 2)
    advantages = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    loss, stats = policy_loss(logp, old_logp, advantages, mask, clip_eps=0.2, clip_eps_low=0.3)
    # 1.25 still clipped to 1.2 -> -1.2 ; 0.75 inside [0.7, 1.2] now: min(-0.75, -0.75) -> 0.75
    close(loss, (-1.2 + 0.75) / 2)
    close(stats["clipfrac"], 0.5)


# --- dual clip (Ye et al. 2020) ------------------------------------------------------------------


def test_dual_clip_bounds_the_loss_of_negative_advantages():
    # ratios 4, 2, 4 with A = -1, -1, +1; c = 3
    logp = torch.log(torch.tensor([[4.0, 2.0, 4.0, 9.0]])).requires_grad_()
    old_logp = torch.zeros(1, 4)
    advantages = torch.tensor([[-1.0, -1.0, 1.0, -5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = policy_loss(logp, old_logp, advantages, mask, clip_eps=0.2, clip_ratio_c=3.0)
    # token 0: min(-4, -1.2) = -4 < -3 -> dual clip -3 ; token 1: min(-2, -1.2) = -2 >= -3 -> -2
    # token 2 (A > 0): min(4, 1.2) = 1.2, dual clip never applies
    close(loss, -(-3.0 - 2.0 + 1.2) / 3)
    close(stats["dual_clipfrac"], 1 / 3)
    close(stats["clipfrac"], 1 / 3)  # token 2's upper clip
    loss.backward()
    # only token 1 (unclipped) has a gradient: d(-r*A/3)/dlogp = -r*A/3 = 2/3
    close(logp.grad, [[0.0, 2 / 3, 0.0, 0.0]])
    without, _ = policy_loss(logp, old_logp, advantages, mask, clip_eps=0.2)
    close(without, -(-4.0 - 2.0 + 1.2) / 3)


# --- GSPO: sequence-level ratio --------------------------------------------------------------------


def gspo_batch():
    # row 0: three tokens with ratios 1.2, 0.9, 1.1 (right padding); row 1: one token, ratio 2 (left padding)
    ratios = torch.tensor([[1.2, 0.9, 1.1, 1.0], [1.0, 1.0, 1.0, 2.0]])
    old_logp = torch.tensor([[-1.0, -2.0, -0.5, 3.0], [5.0, 5.0, 5.0, -1.5]])
    logp = (old_logp + ratios.log()).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 1]])
    advantages = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, -0.5]])  # one advantage per row
    return logp, old_logp, advantages, mask


def test_gspo_ratio_is_the_geometric_mean_per_sequence():
    logp, old_logp, advantages, mask = gspo_batch()
    s0 = (1.2 * 0.9 * 1.1) ** (1 / 3)  # 1.05914
    loss, stats = policy_loss(
        logp, old_logp, advantages, mask, clip_eps=0.2, loss_type="gspo", loss_agg_mode="seq_mean_token_mean"
    )
    # row 0: s0 inside [0.8, 1.2] -> -s0 ; row 1: s=2, A=-0.5: min(-1, -0.6) = -1 -> +1
    close(loss, (-s0 + 1.0) / 2)
    close(stats["clipfrac"], 0.0)
    loss.backward()
    # d/dlogp_t of -(1/2) s_b A_b, s_b = exp(mean_t log r): -(1/2) A_b s_b / n_b on each token of row b
    close(logp.grad, [[-s0 / 6, -s0 / 6, -s0 / 6, 0.0], [0.0, 0.0, 0.0, 0.5]])
    # token_mean weighs row 0's tokens three times: (3 * -s0 + 1) / 4
    token_mean, _ = policy_loss(logp, old_logp, advantages, mask, clip_eps=0.2, loss_type="gspo")
    close(token_mean, (-3 * s0 + 1.0) / 4)


def test_gspo_token_form_equals_the_sequence_objective():
    # The paper's sequence-level objective, written directly: -mean_b min(s_b A_b, clip(s_b) A_b), clipped rows too.
    logp, old_logp, advantages, mask = gspo_batch()
    loss, _ = policy_loss(logp, old_logp, advantages, mask, clip_eps=0.05, loss_type="gspo", loss_agg_mode="seq_mean_token_mean")
    loss.backward()
    grad = logp.grad.clone()
    logp2 = logp.detach().clone().requires_grad_()
    lengths = mask.sum(-1)
    s = torch.exp(torch.where(mask.bool(), logp2 - old_logp, 0.0).sum(-1) / lengths)
    a = torch.tensor([1.0, -0.5])  # each row's advantage
    direct = -torch.minimum(s * a, s.clamp(0.95, 1.05) * a).mean()
    direct.backward()
    close(loss, direct.item())
    torch.testing.assert_close(grad, logp2.grad, atol=1e-7, rtol=0)


# --- all-equal rewards: zero advantages ------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ["ppo", "gspo"])
def test_zero_advantages_give_no_policy_gradient(loss_type):
    # A group whose rewards are all equal has A = 0 on every token: no loss, no gradient, nothing clipped.
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0], [3.0, 1.0, 1.0]])).requires_grad_()
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss, stats = policy_loss(logp, torch.zeros(2, 3), torch.zeros(2, 3), mask, clip_eps=0.2, clip_ratio_c=3.0, loss_type=loss_type)
    loss.backward()
    close(loss, 0.0)
    close(logp.grad, torch.zeros(2, 3))
    close(stats["clipfrac"], 0.0)
    close(stats["dual_clipfrac"], 0.0)


# --- truncated importance sampling against the rollout engine ---------------------------------------


def test_truncated_is_weights_by_hand():
    old_logp = torch.tensor([[-1.0, -2.0, -3.0]])
    rollout_logp = old_logp - torch.log(torch.tensor([[0.5, 1.0, 3.0]]))  # rho = 0.5, 1, 3
    weights, rho = truncated_is_weights(old_logp, rollout_logp, cap=2.0)
    close(rho, [[0.5, 1.0, 3.0]])
    close(weights, [[0.5, 1.0, 2.0]])
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_is_weights(old_logp, rollout_logp, cap=0.0)


def test_objective_with_rollout_correction_weights_each_token():
    old_logp = torch.tensor([[-1.0, -2.0, -3.0, 0.0]])
    logp = old_logp.clone().requires_grad_()  # ratio 1: the policy-gradient term is -w_t A_t
    rollout_logp = old_logp - torch.log(torch.tensor([[0.5, 1.0, 3.0, 100.0]]))  # padding rho 100 must be ignored
    advantages = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    objective = PolicyObjective(rollout_is_cap=2.0)
    loss, shares, maxima = objective(logp, old_logp, advantages, mask, rollout_logp=rollout_logp)
    close(loss, -(0.5 + 1.0 + 2.0) / 3)
    close(shares["rollout_is_ratio_mean"], (0.5 + 1.0 + 3.0) / 3)
    close(shares["rollout_is_clipfrac"], 1 / 3)
    close(maxima["rollout_is_ratio_max"], 3.0)
    loss.backward()
    close(logp.grad, [[-0.5 / 3, -1 / 3, -2 / 3, 0.0]])
    with pytest.raises(ValueError, match="needs rollout_logprobs"):
        objective(logp, old_logp, advantages, mask)
    # off (cap None): no weights, no metrics, rollout logprobs not needed
    loss, shares, maxima = PolicyObjective()(logp, old_logp, advantages, mask)
    close(loss, -1.0)
    assert "rollout_is_ratio_mean" not in shares and not maxima


# --- entropy bonus and KL as a loss term --------------------------------------------------------------


def test_objective_entropy_bonus_and_kl_loss_term():
    # ratio 1, A = 0: only the entropy and KL terms remain. d = logp - ref = 0.5, -1.0
    logp = torch.tensor([[-1.0, -2.0, 0.0]]).requires_grad_()
    ref_logp = torch.tensor([[-1.5, -1.0, 9.0]])
    entropy = torch.tensor([[2.0, 1.0, 50.0]])
    mask = torch.tensor([[1, 1, 0]])
    objective = PolicyObjective(entropy_coef=0.1, kl_loss_coef=0.5, kl_loss_estimator="k3", rollout_is_cap=None)
    loss, shares, _ = objective(logp, logp.detach(), torch.zeros(1, 3), mask, entropy=entropy, ref_logp=ref_logp)
    k3 = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]  # 0.10653, 0.71828
    close(shares["entropy"], 1.5)
    close(shares["kl_loss"], sum(k3) / 2)
    close(loss, -0.1 * 1.5 + 0.5 * sum(k3) / 2)
    loss.backward()
    # d k3 / d logp = 1 - exp(-d), times 0.5 / 2 tokens
    close(logp.grad, [[0.25 * (1 - math.exp(-0.5)), 0.25 * (1 - math.exp(1.0)), 0.0]])
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        objective(logp, logp.detach(), torch.zeros(1, 3), mask, entropy=entropy)
    k1_loss, k1_shares, _ = PolicyObjective(kl_loss_coef=1.0, kl_loss_estimator="k1")(
        logp, logp.detach(), torch.zeros(1, 3), mask, ref_logp=ref_logp
    )
    close(k1_shares["kl_loss"], (0.5 - 1.0) / 2)
    close(k1_loss, -0.25)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"])
def test_objective_shares_over_micro_batches_add_up(mode):
    # Every option on, rows of unequal length split 2 + 1: shares with the step's count add up to the whole.
    torch.manual_seed(0)
    old_logp = -torch.rand(3, 4) * 3
    logp = (old_logp + torch.randn(3, 4) * 0.5).requires_grad_()
    rollout_logp = old_logp + torch.randn(3, 4) * 0.5
    ref_logp = old_logp + torch.randn(3, 4) * 0.3
    entropy = torch.rand(3, 4)
    advantages = torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 0], [1, 0, 0, 0]])
    objective = PolicyObjective(
        clip_eps_high=0.28, clip_ratio_c=3.0, entropy_coef=0.01, kl_loss_coef=0.1, rollout_is_cap=1.5, loss_agg_mode=mode
    )

    def run(rows, count=None):
        return objective(logp[rows], old_logp[rows], advantages[rows], mask[rows], entropy=entropy[rows],
                         ref_logp=ref_logp[rows], rollout_logp=rollout_logp[rows], count=count)

    whole_loss, whole_shares, whole_max = run(slice(None))
    count = agg_count(mask[:2], mode) + agg_count(mask[2:], mode)
    (loss_a, shares_a, max_a), (loss_b, shares_b, max_b) = run(slice(0, 2), count), run(slice(2, 3), count)
    close(loss_a + loss_b, whole_loss.item())
    for key, value in whole_shares.items():
        close(shares_a[key] + shares_b[key], value.item())
    close(max(max_a["rollout_is_ratio_max"], max_b["rollout_is_ratio_max"]), whole_max["rollout_is_ratio_max"].item())
