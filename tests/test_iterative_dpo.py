"""Iterative (online) DPO: pair selection, rollout rows as preference batches, its registry entry, and one
end-to-end run on local Ray with the real vLLM CPU engine (slow)."""

import json
from pathlib import Path

import pytest
import torch

from rlhf.algorithms.iterative_dpo import best_worst_pairs, deal_pairs
from rlhf.config import RLHFConfig, load_config
from rlhf.data.collate import rollout_pairs
from rlhf.data.padding import build_sequence_batch
from rlhf.drivers.cluster import active_roles
from rlhf.registry import get_algorithm

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny" / "iterative_dpo.yaml")


# -- pair selection ---------------------------------------------------------------------------------


def test_best_vs_worst_of_each_prompt():
    scores = torch.tensor([0.4, 1.0, 0.0, 0.4,    # prompt 0: best row 1, worst row 2
                           0.3, 0.3, 0.3, 0.3,    # prompt 1: all equal, no preference
                           1.0, 0.2, 1.0, 0.2])   # prompt 2: ties at both ends: first best (8), last worst (11)
    pairs = best_worst_pairs(scores, group_size=4)
    assert pairs.chosen.tolist() == [1, 4, 8]
    assert pairs.rejected.tolist() == [2, 7, 11]  # the all-equal prompt still gets two distinct rows (masked)
    assert pairs.has_preference.tolist() == [True, False, True]
    assert pairs.score_margin.tolist() == pytest.approx([1.0, 0.0, 0.8])


def test_two_samples_per_prompt_is_online_dpo():
    pairs = best_worst_pairs(torch.tensor([0.1, 0.9, 0.5, 0.5, 0.7, -0.2]), group_size=2)
    assert pairs.chosen.tolist() == [1, 2, 4]
    assert pairs.rejected.tolist() == [0, 3, 5]
    assert pairs.has_preference.tolist() == [True, False, True]


def test_pair_selection_refuses_what_it_cannot_pair():
    with pytest.raises(ValueError, match="at least 2 responses"):
        best_worst_pairs(torch.zeros(4), group_size=1)
    with pytest.raises(ValueError, match=r"must be \[G\*3\]"):
        best_worst_pairs(torch.zeros(4), group_size=3)
    with pytest.raises(ValueError, match="finite"):
        best_worst_pairs(torch.tensor([0.0, float("nan")]), group_size=2)


def test_pairs_are_dealt_evenly_over_the_optimizer_steps():
    has_preference = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool)  # 5 pairs in 8 slots
    minibatches = deal_pairs(has_preference, 2, torch.Generator().manual_seed(0))
    assert [len(m) for m in minibatches] == [4, 4]
    assert sorted(torch.cat(minibatches).tolist()) == list(range(8))  # every slot exactly once
    assert sorted(int(has_preference[m].sum()) for m in minibatches) == [2, 3]
    # 2 pairs over 4 steps: two steps hold one pair each, the other two none (the driver skips those)
    sparse = deal_pairs(torch.tensor([0, 0, 0, 1, 0, 0, 1, 0], dtype=torch.bool), 4)
    assert sorted(int(torch.tensor([0, 0, 0, 1, 0, 0, 1, 0], dtype=torch.bool)[m].sum()) for m in sparse) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="equal minibatches"):
        deal_pairs(has_preference, 3)


# -- rollout rows -> preference batch ------------------------------------------------------------------


def test_rollout_rows_become_pairs_with_their_exact_tokens():
    pad = 0
    prompts = [[5, 6, 7], [5, 6, 7], [8, 9], [8, 9]]
    responses = [[11, 12, 2], [13, 2], [14, 15, 16, 17], [18]]  # unequal lengths, one never ends with EOS 2
    batch = build_sequence_batch(prompts, responses, pad)  # prompts left-padded to 3, responses right-padded to 4
    pairs = rollout_pairs(batch, torch.tensor([1, 2]), torch.tensor([0, 3]), pad)
    # one shared width T = 6, the longest sequence (prompt 3 + response 3, prompt 2 + response 4), right-padded
    assert pairs["chosen_input_ids"].tolist() == [[5, 6, 7, 13, 2, 0], [8, 9, 14, 15, 16, 17]]
    assert pairs["rejected_input_ids"].tolist() == [[5, 6, 7, 11, 12, 2], [8, 9, 18, 0, 0, 0]]
    assert pairs["chosen_attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    assert pairs["rejected_attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    assert pairs["chosen_loss_mask"].tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert pairs["rejected_loss_mask"].tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 1, 0, 0, 0]]
    with pytest.raises(ValueError, match="rows 0 and 2 answer different prompts"):
        rollout_pairs(batch, torch.tensor([0]), torch.tensor([2]), pad)


# -- config and registry ------------------------------------------------------------------------------------


def config(**iterative) -> RLHFConfig:
    ppo = {"rollout_batch_size": 8, "samples_per_prompt": 4, "mini_batch_size": 4, "num_steps": 10, "ppo_epochs": 2}
    return RLHFConfig.model_validate({
        "model": {"policy": "p", "reward_fn": "rlhf.tasks.arithmetic:score", **iterative.pop("model", {})},
        "data": {"train": "t"},
        "algorithm": {"name": "iterative_dpo", "ppo": {**ppo, **iterative.pop("ppo", {})}, "iterative_dpo": iterative},
        "trainer": {"micro_batch_size": 2},
    })


def test_roles_follow_the_reference_update():
    assert active_roles(config()) == ["policy", "reference", "reward", "rollout"]
    assert active_roles(config(reference_update="every_round")) == ["policy", "reward", "rollout"]
    lora = config(model={"lora": {"enabled": True}, "reference_from_base": True})
    assert active_roles(lora) == ["policy", "reward", "rollout"]  # the policy with its adapter off is the reference


def test_lr_schedule_counts_every_optimizer_step_of_pairs():
    algo = get_algorithm("iterative_dpo")
    cfg = config()
    assert algo.samples_per_optimizer_step(cfg) == 4  # pairs
    assert algo.optimizer_steps(cfg) == 10 * 2 * (8 // 4)  # rounds x epochs x steps of 4 pairs in 8 slots


@pytest.mark.parametrize("overrides, message", [
    ({"ppo": {"samples_per_prompt": 1}}, "algorithm.ppo.samples_per_prompt: iterative_dpo compares"),
    ({"ppo": {"mini_batch_size": 3}}, "algorithm.ppo.mini_batch_size: iterative_dpo trains each round's rollout_batch_size=8 pairs"),
    ({"ppo": {"mini_batch_size": 8, "rollout_batch_size": 8}, "model": {"reward_fn": None}}, "model.reward: iterative_dpo needs"),
    ({"reference_update": "every_round", "model": {"reference": "r"}}, "model.reference: algorithm.iterative_dpo.reference_update"),
    ({"reference_update": "sometimes"}, "reference_update"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_tiny_config_loads_and_dry_runs(tiny_assets_dir, capsys):
    from rlhf.dry_run import dry_run

    cfg = load_config(TINY, [f"tiny_assets={tiny_assets_dir}", f"model.policy={tiny_assets_dir}/policy",
                             f"data.train={tiny_assets_dir}/data/prompts_train.jsonl",
                             f"data.eval={tiny_assets_dir}/data/prompts_eval.jsonl"])
    assert cfg.algorithm.name == "iterative_dpo" and active_roles(cfg) == ["policy", "reference", "reward", "rollout"]
    dry_run(cfg)
    assert "dry run OK: algorithm iterative_dpo" in capsys.readouterr().out


# -- end to end ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rounds_pair_train_and_sync_on_ray(ray_session, tiny_assets_dir, tmp_path):
    from test_ppo_e2e import tiny_overrides

    from rlhf.drivers.metrics import read_metrics
    from rlhf.run import resolve_config, run

    out = tmp_path / "itdpo"
    # The reference moved every round (the tiny config's frozen reference actor is the other path), 3 rounds,
    # the eval after the last.
    run(resolve_config(TINY, tiny_overrides(tiny_assets_dir, out, "algorithm.ppo.num_steps=3", "algorithm.ppo.eval_interval=3",
                                            "algorithm.iterative_dpo.reference_update=every_round", "checkpoint.interval=0")))
    history = read_metrics(out / "metrics.jsonl")
    assert [row["step"] for row in history] == [1, 2, 3]
    assert set(json.loads((out / "placement.json").read_text())) == {"policy", "reward", "rollout"}
    for row in history:
        assert 0 < row["pairs/count"] <= 16 and row["pairs/score_margin"] > 0
        assert 1 <= row["policy/optimizer_steps"] <= 4  # 2 epochs x 2 steps of 8 pair slots
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                    "logps/chosen", "logps/rejected", "nll_loss", "policy/grad_norm"):
            assert key in row, key
    # The engine samples with the weights the trainer just published: versions advance and the logprobs agree.
    assert [row["sync/version"] for row in history] == [1, 2, 3]
    assert max(row["rollout/logprob_diff_max"] for row in history) < 1e-3
    # Each round starts at its reference (rewards 0 in its first step); its later steps move away from it.
    assert abs(history[2]["rewards/chosen"]) + abs(history[2]["rewards/rejected"]) > 0
    assert "eval/reward/mean" in history[-1]
    assert sorted(p.name for p in (out / "checkpoints" / "step_000003").iterdir()) == [
        "COMPLETE", "driver_state.json", "policy", "policy_hf"]
    assert "Iterative DPO finished: 3 steps" in (out / "summary.txt").read_text()


def params_of(trainer) -> torch.Tensor:
    """Inside an actor: every parameter, flattened, in name order."""
    return torch.cat([p.detach().flatten().cpu() for _, p in sorted(trainer.module.named_parameters())])


@pytest.mark.slow
def test_masked_pair_slots_train_exactly_like_the_real_pairs_alone(ray_session, tiny_assets):
    """dpo_step on 4 slots of which 2 are masked (one per micro-batch) = dpo_step on the 2 real pairs alone:
    the same loss, metrics (RPO's NLL term included) and updated weights."""
    import sys

    import ray
    import ray.cloudpickle

    from rlhf.data.batch_ops import index_batch
    from rlhf.data.collate import collate_preference
    from rlhf.data.tokenize import TokenizedPreference
    from rlhf.models.loading import load_tokenizer
    from rlhf.workers.group import WorkerGroup
    from rlhf.workers.policy import PolicyTrainer

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # params_of runs inside the actors
    tok = load_tokenizer(tiny_assets["policy"])

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    examples = [TokenizedPreference(ids(p), ids(c) + [tok.eos_token_id], ids(r) + [tok.eos_token_id])
                for p, c, r in (("3+4=", "7", "71"), ("1+1=", "2 or 3", "5"), ("9+8=", "17", "seventy"), ("0+5=", "5", "6"))]
    slots = collate_preference(examples, tok.pad_token_id)
    slots["ref_chosen_logps"] = torch.tensor([-9.0, -30.0, -12.0, -35.0])
    slots["ref_rejected_logps"] = torch.tensor([-8.0, -7.0, -25.0, -6.0])
    real = index_batch(slots, [0, 2])
    slots["pair_mask"] = torch.tensor([1.0, 0.0, 1.0, 0.0])

    def group(pairs_per_step: int) -> WorkerGroup:
        cfg = RLHFConfig.model_validate({
            "model": {"policy": tiny_assets["policy"], "reward_fn": "rlhf.tasks.arithmetic:score", "dtype": "float32"},
            "data": {"train": tiny_assets["prompts_train"]},
            "algorithm": {"name": "iterative_dpo", "dpo": {"beta": 0.5, "nll_coef": 0.5},
                          "ppo": {"rollout_batch_size": pairs_per_step, "mini_batch_size": pairs_per_step, "samples_per_prompt": 2},
                          "iterative_dpo": {"reference_update": "every_round"}},
            "trainer": {"micro_batch_size": 2, "learning_rate": 1e-3, "seed": 3},
        })
        g = WorkerGroup(PolicyTrainer, "policy", 1, {"num_cpus": 0.5}, init_args=(cfg,), call_timeout_s=300)
        g.setup_distributed()
        return g

    masked, alone = group(4), group(2)  # 2 micro-batches of 2 slots, each with one real pair; 1 micro-batch of 2 pairs
    try:
        before = ray.get(alone.actors[0].__ray_call__.remote(params_of))
        stats_masked, stats_alone = masked.scatter("dpo_step", slots)[0], alone.scatter("dpo_step", real)[0]
        params_masked, params_alone = (ray.get(g.actors[0].__ray_call__.remote(params_of)) for g in (masked, alone))
    finally:
        masked.kill()
        alone.kill()
    assert stats_masked.keys() == stats_alone.keys()
    for key, value in stats_alone.items():
        assert stats_masked[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert stats_alone["nll_loss"] > 0 and stats_alone["policy/grad_norm"] > 0
    update_masked, update_alone = params_masked - before, params_alone - before
    # 1e-4 as in test_split_invariance: Adam magnifies float32 summation-order noise where a gradient is ~0
    assert float((update_masked - update_alone).norm() / update_alone.norm()) < 1e-4
