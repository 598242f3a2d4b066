"""The algorithm registry: roles per algorithm, checks at config load, and no branch on the name elsewhere."""

import re
from pathlib import Path

import pytest

from rlhf.algorithms.advantages import ESTIMATORS
from rlhf.config import AlgorithmConfig, RLHFConfig
from rlhf.drivers.cluster import active_roles
from rlhf.drivers.lifecycle import Driver
from rlhf.registry import ALGORITHMS, get_algorithm

REPO = Path(__file__).resolve().parents[1]


def online(name, **ppo):
    return RLHFConfig.model_validate({
        "model": {"policy": "p", "reward_fn": "rlhf.tasks.arithmetic:score", "critic": "c"},
        "data": {"train": "t"},
        "algorithm": {"name": name, "ppo": {"rollout_batch_size": 8, "samples_per_prompt": 4, "mini_batch_size": 16, **ppo}},
        "trainer": {"micro_batch_size": 4},
    })


def test_critic_free_algorithms_start_no_critic():
    assert active_roles(online("ppo")) == ["policy", "reference", "reward", "critic", "rollout"]
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"):
        assert active_roles(online(name)) == ["policy", "reference", "reward", "rollout"], name


def test_no_reference_without_a_kl_term_or_metric():
    assert "reference" not in active_roles(online("grpo", kl_coef=0.0, log_kl=False))
    assert "reference" in active_roles(online("grpo", kl_coef=0.0, log_kl=True))  # the KL metric needs it
    assert "reference" in active_roles(online("grpo", kl_coef=0.0, log_kl=False, kl_controller="adaptive"))
    assert "reference" in active_roles(online("grpo", kl_coef=0.0, log_kl=False, kl_loss_coef=0.01))  # KL as a loss term
    cfg = online("rloo")
    cfg.model.lora.enabled = True
    cfg.model.reference_from_base = True
    assert "reference" not in active_roles(cfg)  # the policy scores with its adapter disabled


def test_offline_roles():
    base = {"model": {"policy": "p"}, "data": {"train": "t"}, "trainer": {"micro_batch_size": 4, "train_batch_size": 8}}
    names = ("dpo", "kto", "sft", "rm")
    roles = {name: active_roles(RLHFConfig.model_validate({**base, "algorithm": {"name": name}})) for name in names}
    # DPO and KTO precompute against the initial policy by default: the policy scores the pairs, no reference actor.
    assert roles == {"dpo": ["policy"], "kto": ["policy"], "sft": ["policy"], "rm": ["policy"]}
    for name in ("dpo", "kto"):
        live = {**base, "algorithm": {"name": name, name: {"precompute_ref_logprobs": False}}}
        assert active_roles(RLHFConfig.model_validate(live)) == ["policy", "reference"], name
    other_reference = {**base, "model": {"policy": "p", "reference": "r"}, "algorithm": {"name": "dpo"}}
    assert active_roles(RLHFConfig.model_validate(other_reference)) == ["policy", "reference"]


def test_entries_are_consistent_with_the_config_and_the_estimators():
    assert set(AlgorithmConfig.model_fields["name"].annotation.__args__) == set(ALGORITHMS)
    for algo in ALGORITHMS.values():
        assert algo.section is None or algo.section in AlgorithmConfig.model_fields, algo.name
        assert issubclass(algo.driver_class(), Driver)
        if algo.advantage is not None:
            assert algo.advantage in ESTIMATORS
            # gae is the one estimator that reads the critic's values
            assert ("critic" in active_roles(online(algo.name))) == (algo.advantage == "gae"), algo.name


def test_group_algorithms_need_groups():
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"):
        with pytest.raises(ValueError, match=f"algorithm.ppo.samples_per_prompt: {name} compares the responses"):
            online(name, samples_per_prompt=1, mini_batch_size=8)
    online("reinforce_pp", samples_per_prompt=1, mini_batch_size=8)  # a batch baseline: no groups needed
    with pytest.raises(ValueError, match="dynamic_sampling: drops groups"):
        online("reinforce_pp", samples_per_prompt=1, mini_batch_size=8, dynamic_sampling=True)


def test_optimizer_steps_of_an_online_run():
    cfg = online("grpo", num_steps=10, ppo_epochs=2)
    assert get_algorithm("grpo").optimizer_steps(cfg) == 10 * 2 * (8 * 4 // 16)
    assert get_algorithm("grpo").samples_per_optimizer_step(cfg) == 16
    with pytest.raises(ValueError, match="unknown algorithm 'gpro'"):
        get_algorithm("gpro")


def test_nothing_outside_the_registry_branches_on_the_algorithm_name():
    branch = re.compile(r"algorithm\.name\s*(==|!=|in\b)|\balgo\s*(==|!=)|name\s*==\s*\"(ppo|grpo|dpo|sft|rm|rloo)\"")
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in (REPO / "rlhf").rglob("*.py") if p.name != "registry.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if branch.search(line)]
    assert offenders == []


def test_a_fault_aimed_at_a_role_the_algorithm_does_not_start_is_refused():
    with pytest.raises(ValueError, match=r"debug.fail_at\[0\].role: grpo starts no critic actor here \(its roles: policy, reference"):
        RLHFConfig.model_validate({**online("grpo").model_dump(), "debug": {"fail_at": {"role": "critic", "step": 1}}})


def test_dr_grpo_refuses_length_normalised_loss():
    cfg = online("dr_grpo").model_dump()
    cfg["trainer"]["loss_agg_mode"] = "seq_mean_token_mean"
    with pytest.raises(ValueError, match="trainer.loss_agg_mode: dr_grpo removes GRPO's per-response length normalisation"):
        RLHFConfig.model_validate(cfg)
    cfg["algorithm"]["name"] = "grpo"
    RLHFConfig.model_validate(cfg)  # GRPO as published normalises by length
