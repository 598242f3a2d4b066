"""One optimizer step gives the same update however its batch is split (issue 9), on every tiny model
family: the whole batch in one
micro-batch on one actor, micro-batches of 1 on one actor, micro-batches of 1 on 2 data-parallel
DeepSpeed ranks (gloo), and token-budget micro-batches (trainer.micro_batch_tokens, issue 14) on 2 ranks
(the real-model-shaped families: the whole batch against the token-budget split, `splits_for`),
for the PPO policy (every policy-loss option on), the critic (char family), SFT, DPO with an NLL term and KTO (a
fixed reference point, as the driver computes it for the whole step). The rows have unequal response
lengths, so a loss averaged per micro-batch would differ.
The token budget is set so that in the PPO step rank 0 (the two short rows) needs one micro-batch and
rank 1 (the two long rows) two, so rank 0 must split its own to match; every micro-batch is trimmed to
its rows' columns. The scoring passes (policy logprobs, sequence logprobs, critic values) of the
token-budget group also match the whole batch's, row for row.

Each configuration's actors run the same sequence of steps (PPO, SFT, DPO for the policy; two value
steps for the critic); after every step the metrics and the parameters must agree to 1e-5 (relative).
"""

from __future__ import annotations

import sys

import pytest
import ray
import ray.cloudpickle
import torch

from rlhf.config import RLHFConfig
from rlhf.data.batch_layouts import find_layout
from rlhf.data.collate import collate_preference, collate_sft, collate_unpaired, pairs_as_rows
from rlhf.data.micro_batches import pack_by_tokens, padded_tokens
from rlhf.data.padding import build_sequence_batch
from rlhf.data.tokenize import TokenizedPreference, TokenizedSFT, TokenizedUnpaired
from rlhf.models.forward import response_logprobs
from rlhf.models.loading import load_causal_lm, load_tokenizer
from rlhf.workers.critic import CriticTrainer
from rlhf.workers.group import WorkerGroup
from rlhf.workers.policy import PolicyTrainer

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.slow  # starts 6 DeepSpeed actors per test on the char family, 3 on the others

ROWS = 4
TOKEN_BUDGET = "token budget, 2 actors"
# (actors, micro_batch_size): the reference first; the token-budget split caps micro-batches at 2 rows
SPLITS = {
    "whole batch, 1 actor": (1, ROWS), "micro-batch 1, 1 actor": (1, 1), "micro-batch 1, 2 actors": (2, 1),
    TOKEN_BUDGET: (2, 2),
}
# The char family runs every split. The real-model-shaped families run the reference against the token-budget
# split only: it combines the other two (micro-batches within a rank, rows across 2 ranks) and adds trimming,
# and each actor costs ~6 s of start-up on 2 cores (suite time, issue 13).
ALL_FAMILIES_SPLITS = ("whole batch, 1 actor", TOKEN_BUDGET)


def splits_for(family: str) -> dict[str, tuple[int, int]]:
    return SPLITS if family == "char" else {name: SPLITS[name] for name in ALL_FAMILIES_SPLITS}


PROMPTS = ["3+4=", "1+1=", "9+8=", "0+5="]
RESPONSES = ["7", "2 is the sum", "17, that is the answer", "five, I think, or maybe six"]  # unequal lengths in every family
REJECTED = ["6", "3", "71 or so", "4"]
TEMPERATURE = 0.7


def make_config(assets, actors: int, micro: int, micro_tokens: int | None = None) -> RLHFConfig:
    return RLHFConfig.model_validate(
        {
            "model": {"policy": assets["policy"], "reward": assets["reward"], "critic": assets["critic"], "dtype": "float32"},
            "data": {"train": assets["prompts_train"]},
            "algorithm": {
                "ppo": {
                    "rollout_batch_size": ROWS, "mini_batch_size": ROWS, "entropy_coef": 0.01, "kl_loss_coef": 0.1,
                    "clip_eps_high": 0.28, "rollout_is_cap": 1.2, "value_clip": 0.05,
                },
                "dpo": {"nll_coef": 0.5},
            },
            "rollout": {"temperature": TEMPERATURE},
            "resources": {"policy": {"num_actors": actors}, "critic": {"num_actors": actors}},
            "trainer": {
                "micro_batch_size": micro, "micro_batch_tokens": micro_tokens, "train_batch_size": ROWS, "zero_stage": 2,
                "learning_rate": 1e-5, "critic_learning_rate": 1e-5, "seed": 3,
            },
        }
    )


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def batches(family_assets) -> dict[str, dict]:
    tokenizer = load_tokenizer(family_assets["policy"])
    eos = tokenizer.eos_token_id
    prompts = [token_ids(tokenizer, p) for p in PROMPTS]
    responses = [token_ids(tokenizer, r) + [eos] for r in RESPONSES]
    rejected = [token_ids(tokenizer, r) + [eos] for r in REJECTED]
    assert len({len(r) for r in responses}) == ROWS  # unequal lengths: the split matters

    sequences = build_sequence_batch(prompts, responses, tokenizer.pad_token_id)
    mask = sequences["response_mask"]
    model = load_causal_lm(family_assets["policy"], "float32").eval()
    with torch.no_grad():
        logp = response_logprobs(model, sequences["input_ids"], sequences["attention_mask"], mask.shape[1], TEMPERATURE)
    # Fixed, deterministic offsets so that clipping, truncated importance sampling and the KL term all act.
    wave = torch.sin(torch.arange(mask.numel(), dtype=torch.float32)).reshape(mask.shape)
    ppo = {
        **sequences,
        "old_logprobs": (logp + 0.3 * wave) * mask,
        "rollout_logprobs": (logp + 0.3 * wave - 0.2 * wave.roll(1, 1)) * mask,
        "ref_logprobs": (logp - 0.4 * wave.roll(2, 1)) * mask,
        "advantages": torch.linspace(-1.5, 2.0, mask.numel()).reshape(mask.shape) * mask,
        "old_values": 0.1 * wave * mask,
        "returns": torch.linspace(1.0, -1.0, mask.numel()).reshape(mask.shape) * mask,
    }
    sft = collate_sft([TokenizedSFT(p, r) for p, r in zip(prompts, responses)], tokenizer.pad_token_id)
    dpo = collate_preference([TokenizedPreference(p, c, r) for p, c, r in zip(prompts, responses, rejected)], tokenizer.pad_token_id)
    dpo["ref_chosen_logps"] = torch.tensor([-9.0, -30.0, -12.0, -35.0])
    dpo["ref_rejected_logps"] = torch.tensor([-8.0, -7.0, -25.0, -6.0])
    kto = collate_unpaired([TokenizedUnpaired(p, r, d) for p, r, d in zip(prompts, responses, [True, False, False, True])],
                           tokenizer.pad_token_id)
    kto["ref_logps"] = torch.tensor([-9.0, -30.0, -12.0, -35.0])
    return {"ppo_step": ppo, "sft_step": sft, "dpo_step": dpo, "kto_step": kto, "value_step": ppo}


@pytest.fixture(scope="module")
def token_budget(batches) -> int:
    """The PPO batch's rows 0 and 1 (rank 0's shard) in one trimmed micro-batch; rows 2 and 3 (rank 1's) need two."""
    _, extents = find_layout(batches["ppo_step"])
    lengths = extents.tolist()
    budget = padded_tokens([0, 1], lengths)
    assert len(pack_by_tokens(lengths[:2], budget, 2)) == 1 and len(pack_by_tokens(lengths[2:], budget, 2)) == 2
    return budget


def start_groups(actor_cls, role: str, assets, budget: int, *args, splits: dict | None = None) -> dict[str, WorkerGroup]:
    groups = {}
    for name, (actors, micro) in (splits or splits_for(assets["family"])).items():
        cfg = make_config(assets, actors, micro, budget if name == TOKEN_BUDGET else None)
        groups[name] = WorkerGroup(actor_cls, role, actors, {"num_cpus": 0.5}, init_args=(cfg, *args), call_timeout_s=300)
    for group in groups.values():
        group.setup_distributed()
    return groups


def flat_params(trainer) -> torch.Tensor:
    """Inside an actor: every parameter, flattened, in name order."""
    return torch.cat([p.detach().flatten().cpu() for _, p in sorted(trainer.module.named_parameters())])


def flat_first_moments(trainer) -> torch.Tensor:
    """Inside an actor (collective, every rank calls): Adam's first moment m of every parameter, flattened.
    After the first step m = (1 - beta1) g; after step k, m = beta1 m' + (1 - beta1) g_k: the gradients."""
    from deepspeed.utils import safe_get_full_optimizer_state

    return torch.cat(
        [safe_get_full_optimizer_state(p, "exp_avg").flatten().cpu() for _, p in sorted(trainer.module.named_parameters())]
    )


def on_every_rank(group: WorkerGroup, fn) -> torch.Tensor:
    return ray.get([actor.__ray_call__.remote(fn) for actor in group.actors])[0]


def relative_gap(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x - reference).norm() / reference.norm())


def assert_same_updates(groups: dict[str, WorkerGroup], steps: list[tuple]) -> list[dict]:
    """Run the steps, (method, batch[, keyword arguments]), on every group; after each, the metrics, the gradients and the parameter update match
    the first group's.

    Gradients are read as Adam's first moments, compared as whole vectors (||m - m_ref|| <= 1e-5 ||m_ref||).
    The parameter update gets 1e-4: Adam divides each coordinate by its own gradient magnitude, so on
    coordinates whose gradient is ~0 it magnifies float32 summation-order noise (measured: 3e-6 to 1e-5).
    """
    reference = next(iter(groups))
    before = {name: on_every_rank(group, flat_params) for name, group in groups.items()}
    history = []
    for method, batch, *kwargs in steps:
        pending = {name: group.scatter_async(method, batch, **(kwargs[0] if kwargs else {})) for name, group in groups.items()}
        stats = {}
        for name, call in pending.items():
            per_rank = call.wait()
            assert all(s == per_rank[0] for s in per_rank), f"{name}: ranks report different metrics"
            stats[name] = per_rank[0]
        moments = {name: on_every_rank(group, flat_first_moments) for name, group in groups.items()}
        after = {name: on_every_rank(group, flat_params) for name, group in groups.items()}
        update = {name: after[name] - before[name] for name in groups}
        for name in groups:
            assert stats[name].keys() == stats[reference].keys()
            for key, value in stats[reference].items():
                assert stats[name][key] == pytest.approx(value, rel=1e-5, abs=1e-7), f"{method} {name}: {key}"
            gradient_gap = relative_gap(moments[name], moments[reference])
            update_gap = relative_gap(update[name], update[reference])
            print(f"{method} {name}: gradient gap {gradient_gap:.2e}, update gap {update_gap:.2e}")
            assert gradient_gap <= 1e-5, f"{method} {name}: the gradients differ by {gradient_gap:.2e} (relative)"
            assert update_gap <= 1e-4, f"{method} {name}: the update differs by {update_gap:.2e} (relative)"
        before = after
        history.append(stats[reference])
    return history


def assert_same_scores(groups: dict[str, WorkerGroup], method: str, batch: dict) -> None:
    """The token-budget group's ``method`` outputs equal the whole batch's, in the original row order."""
    whole = torch.cat(groups[next(iter(groups))].scatter(method, batch))
    budgeted = torch.cat(groups[TOKEN_BUDGET].scatter(method, batch))
    assert budgeted.shape == whole.shape and torch.allclose(budgeted, whole, rtol=1e-5, atol=1e-5), method


def test_policy_update_does_not_depend_on_the_split(ray_session, family_assets, batches, token_budget):
    groups = start_groups(PolicyTrainer, "policy", family_assets, token_budget)
    try:
        assert_same_scores(groups, "logprobs", batches["ppo_step"])
        assert_same_scores(groups, "sequence_logprobs", pairs_as_rows(batches["dpo_step"]))
        steps = [(m, batches[m]) for m in ("ppo_step", "sft_step", "dpo_step")] + [("kto_step", batches["kto_step"], {"kl": 0.3})]
        ppo, sft, dpo, kto = assert_same_updates(groups, steps)
    finally:
        for group in groups.values():
            group.kill()
    # Every option acted, so each was compared across the splits.
    assert ppo["policy/clipfrac"] > 0 and ppo["policy/rollout_is_clipfrac"] > 0 and ppo["policy/kl_loss"] > 0
    assert ppo["policy/rollout_is_ratio_max"] > 1.2 and ppo["policy/grad_norm"] > 0
    assert sft["loss"] > 0 and dpo["nll_loss"] > 0 and dpo["policy/grad_norm"] > 0
    assert kto["rewards/margins"] != 0 and kto["policy/grad_norm"] > 0


def test_critic_update_does_not_depend_on_the_split(ray_session, family_assets, batches, token_budget):
    # The char family only, the reference against the token-budget split (micro-batches within a rank, rows across
    # 2 ranks, trimming: the other splits combined): the critic shares the loss aggregation, micro-batching and
    # trimming with the policy, whose test runs every split on the char family and this pair on every family's
    # backbone; each further actor costs ~5 s of start-up on 2 cores (suite time).
    if family_assets["family"] != "char":
        pytest.skip("the critic's split invariance runs on the char family; the policy's covers every family's backbone")
    groups = start_groups(CriticTrainer, "critic", family_assets, token_budget, family_assets["critic"],
                          splits={name: SPLITS[name] for name in ALL_FAMILIES_SPLITS})
    try:
        assert_same_scores(groups, "values", batches["value_step"])
        history = assert_same_updates(groups, [("value_step", batches["value_step"])] * 2)
    finally:
        for group in groups.values():
            group.kill()
    assert history[0]["value/grad_norm"] > 0 and history[1]["value/clipfrac"] > 0
