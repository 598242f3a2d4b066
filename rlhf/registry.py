"""The algorithm registry: every runnable algorithm is one `Algorithm` entry, and nothing else branches on its name.

An entry declares what the rest of the system asks about an algorithm:

- ``roles(cfg)``: the roles started as separate actors (`drivers.cluster` plans only these);
- ``section``: its hyperparameter section under ``algorithm`` (``algorithm.ppo`` for every online
  algorithm, ``algorithm.dpo``, ``algorithm.kto``, ``algorithm.rm``, ``algorithm.iterative_dpo`` (which also reads
  ``ppo`` and ``dpo``); SFT has none);
- ``checks``: its cross-field config rules, run at load (`rlhf.config.tree._check_consistency`), each raising
  ``ValueError("key: reason")``;
- ``driver``: the driver class that runs it, as ``"module:Class"`` (imported only by `run`), whose
  step is the algorithm's step (`drivers.lifecycle.Driver`);
- ``samples_per_optimizer_step(cfg)`` and ``optimizer_steps(cfg)``: what the trainers need to
  size DeepSpeed's gradient accumulation and the lr schedule (`workers.trainer_base`);
- ``advantage``: online algorithms only, the estimator in `rlhf.algorithms.advantages.ESTIMATORS`.

Adding an algorithm is one entry here, its config section and its driver (or an estimator).
This module imports nothing heavy, so `rlhf.config` can validate against it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlhf.config import RLHFConfig

Check = Callable[["RLHFConfig"], None]


@dataclass(frozen=True)
class Algorithm:
    name: str
    description: str  # one line: what it is, with its paper
    driver: str  # "module:Class", a `drivers.lifecycle.Driver`
    roles: Callable[["RLHFConfig"], list[str]]
    section: str | None  # its field of `config.AlgorithmConfig`
    checks: tuple[Check, ...]
    samples_per_optimizer_step: Callable[["RLHFConfig"], int]
    optimizer_steps: Callable[["RLHFConfig"], int | None]
    advantage: str | None = None  # online: the advantage estimator

    def check(self, cfg: RLHFConfig) -> None:
        for check in self.checks:
            check(cfg)

    def driver_class(self):
        module, _, cls = self.driver.partition(":")
        return getattr(importlib.import_module(module), cls)


# -- online RL: rollouts from the engines, a reward, a policy-gradient update ---------------------------


def needs_reference(cfg: RLHFConfig) -> bool:
    """An online run needs the reference's logprobs when a KL term uses them or the KL metric is asked for."""
    ppo = cfg.algorithm.ppo
    return ppo.kl_coef > 0 or ppo.kl_loss_coef > 0 or ppo.kl_controller == "adaptive" or ppo.log_kl


def _online_roles(critic: bool) -> Callable[["RLHFConfig"], list[str]]:
    def roles(cfg: RLHFConfig) -> list[str]:
        out = ["policy"]
        if needs_reference(cfg) and not cfg.model.reference_from_base:
            out.append("reference")  # with reference_from_base the policy scores with its adapter off
        out.append("reward")
        if critic:
            out.append("critic")
        return out + ["rollout"]

    return roles


def _check_reward(cfg: RLHFConfig) -> None:
    if not (cfg.model.reward or cfg.model.reward_fn):
        raise ValueError(f"model.reward: {cfg.algorithm.name} needs model.reward or model.reward_fn")
    if cfg.model.reward and cfg.model.reward_fn:
        raise ValueError("model.reward_fn: set model.reward or model.reward_fn, not both")


def _check_minibatches(trained: tuple[str, ...]) -> Check:
    def check(cfg: RLHFConfig) -> None:
        ppo, micro = cfg.algorithm.ppo, cfg.trainer.micro_batch_size
        samples = ppo.rollout_batch_size * ppo.samples_per_prompt
        if samples % ppo.mini_batch_size:
            raise ValueError(
                f"algorithm.ppo.mini_batch_size: rollout_batch_size*samples_per_prompt={samples} "
                f"is not a multiple of mini_batch_size={ppo.mini_batch_size}"
            )
        for role in trained:
            n = getattr(cfg.resources, role).num_actors
            if ppo.mini_batch_size % (micro * n):
                raise ValueError(
                    f"algorithm.ppo.mini_batch_size: {ppo.mini_batch_size} is not a multiple of "
                    f"trainer.micro_batch_size*resources.{role}.num_actors={micro * n}"
                )

    return check


def _check_critic_model(cfg: RLHFConfig) -> None:
    if not (cfg.model.critic or cfg.model.reward):
        raise ValueError(f"model.critic: {cfg.algorithm.name} needs a critic model (model.critic, or model.reward to start from)")


def _check_groups(cfg: RLHFConfig) -> None:
    if cfg.algorithm.ppo.samples_per_prompt < 2:
        raise ValueError(
            f"algorithm.ppo.samples_per_prompt: {cfg.algorithm.name} compares the responses to one prompt, "
            f"it needs at least 2 (got {cfg.algorithm.ppo.samples_per_prompt})"
        )


def _check_dynamic_sampling(cfg: RLHFConfig) -> None:
    if cfg.algorithm.ppo.dynamic_sampling and cfg.algorithm.ppo.samples_per_prompt < 2:
        raise ValueError("algorithm.ppo.dynamic_sampling: drops groups of equal rewards; needs samples_per_prompt >= 2")


def _check_no_length_normalisation(cfg: RLHFConfig) -> None:
    if cfg.trainer.loss_agg_mode == "seq_mean_token_mean":
        raise ValueError(
            f"trainer.loss_agg_mode: {cfg.algorithm.name} removes GRPO's per-response length normalisation; "
            "seq_mean_token_mean puts it back (use token_mean or seq_mean_token_sum)"
        )


def _online_samples_per_step(cfg: RLHFConfig) -> int:
    return cfg.algorithm.ppo.mini_batch_size


def _online_optimizer_steps(cfg: RLHFConfig) -> int:
    ppo = cfg.algorithm.ppo
    per_rollout = ppo.rollout_batch_size * ppo.samples_per_prompt // ppo.mini_batch_size
    return ppo.num_steps * ppo.ppo_epochs * per_rollout


def _online(name: str, advantage: str, description: str, critic: bool = False, grouped: bool = True,
            extra_checks: tuple[Check, ...] = ()) -> Algorithm:
    checks: tuple[Check, ...] = (_check_reward, _check_dynamic_sampling, *extra_checks)
    if critic:
        checks += (_check_critic_model, _check_minibatches(("policy", "critic")))
    else:
        checks += (_check_minibatches(("policy",)),)
    if grouped:
        checks += (_check_groups,)
    return Algorithm(
        name=name,
        description=description,
        driver="rlhf.drivers.ppo:OnlineDriver",
        roles=_online_roles(critic),
        section="ppo",
        checks=checks,
        samples_per_optimizer_step=_online_samples_per_step,
        optimizer_steps=_online_optimizer_steps,
        advantage=advantage,
    )


# -- offline: a fixed dataset, one optimizer step per batch ---------------------------------------------


def _check_offline_batch(cfg: RLHFConfig) -> None:
    micro, n = cfg.trainer.micro_batch_size, cfg.resources.policy.num_actors
    if cfg.trainer.train_batch_size % (micro * n):
        raise ValueError(
            f"trainer.train_batch_size: {cfg.trainer.train_batch_size} is not a multiple of "
            f"trainer.micro_batch_size*resources.policy.num_actors={micro * n}"
        )


def _check_dpo_smoothing(cfg: RLHFConfig) -> None:
    dpo = cfg.algorithm.dpo
    if dpo.label_smoothing and dpo.loss_type not in ("sigmoid", "robust"):
        raise ValueError(f"algorithm.dpo.label_smoothing: applies only to loss_type sigmoid and robust, not {dpo.loss_type!r}")


def _check_rm_full_weights(cfg: RLHFConfig) -> None:
    if cfg.model.lora.enabled:
        raise ValueError("model.lora: reward-model training (algorithm.name=rm) trains all weights; set model.lora.enabled=false")


def _reference_roles(section: str) -> Callable[["RLHFConfig"], list[str]]:
    """Roles of an offline algorithm with a frozen reference (DPO, KTO): a reference actor, except with LoRA's
    reference_from_base (the policy disables its adapter) and when precomputing against the initial policy
    (the policy scores every example itself before its first update)."""

    def roles(cfg: RLHFConfig) -> list[str]:
        if cfg.model.reference_from_base:
            return ["policy"]
        initial_policy = cfg.model.reference in (None, cfg.model.policy)
        precompute = getattr(cfg.algorithm, section).precompute_ref_logprobs
        return ["policy"] if precompute and initial_policy else ["policy", "reference"]

    return roles


def _policy_only(cfg: RLHFConfig) -> list[str]:
    return ["policy"]  # RM trains its model in the policy's pool and resources


def _offline(name: str, driver: str, description: str, roles, section: str | None, *checks: Check) -> Algorithm:
    return Algorithm(
        name=name,
        description=description,
        driver=driver,
        roles=roles,
        section=section,
        checks=(_check_offline_batch, *checks),
        samples_per_optimizer_step=lambda cfg: cfg.trainer.train_batch_size,
        optimizer_steps=lambda cfg: cfg.trainer.max_steps,
    )


# -- iterative (online) DPO: rollouts and a reward as online, pairs of each prompt's best and worst, the DPO loss --


def _iterative_dpo_roles(cfg: RLHFConfig) -> list[str]:
    """A reference actor only for a frozen reference that is not the LoRA policy's base model (every_round:
    the policy scores the pairs itself before each round's update)."""
    frozen = cfg.algorithm.iterative_dpo.reference_update == "never"
    return ["policy", *(["reference"] if frozen and not cfg.model.reference_from_base else []), "reward", "rollout"]


def _check_pair_minibatches(cfg: RLHFConfig) -> None:
    """A round has one pair slot per prompt; mini_batch_size counts pairs (`drivers.iterative_dpo`)."""
    ppo, micro, n = cfg.algorithm.ppo, cfg.trainer.micro_batch_size, cfg.resources.policy.num_actors
    if ppo.rollout_batch_size % ppo.mini_batch_size:
        raise ValueError(f"algorithm.ppo.mini_batch_size: iterative_dpo trains each round's rollout_batch_size="
                         f"{ppo.rollout_batch_size} pairs in steps of mini_batch_size pairs; {ppo.mini_batch_size} does not divide it")
    if ppo.mini_batch_size % (micro * n):
        raise ValueError(f"algorithm.ppo.mini_batch_size: {ppo.mini_batch_size} pairs is not a multiple of "
                         f"trainer.micro_batch_size*resources.policy.num_actors={micro * n}")


def _check_moving_reference(cfg: RLHFConfig) -> None:
    if cfg.algorithm.iterative_dpo.reference_update == "every_round":
        for key in ("reference", "reference_from_base"):
            if getattr(cfg.model, key):
                raise ValueError(f"model.{key}: algorithm.iterative_dpo.reference_update=every_round makes the policy "
                                 f"of each round's start the reference; unset model.{key} or use reference_update=never")


def _iterative_dpo_optimizer_steps(cfg: RLHFConfig) -> int:
    ppo = cfg.algorithm.ppo
    return ppo.num_steps * ppo.ppo_epochs * (ppo.rollout_batch_size // ppo.mini_batch_size)


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        _online("ppo", "gae", "PPO with a KL-shaped reward, a critic and GAE (Schulman et al. 2017; Ouyang et al. 2022)",
                critic=True, grouped=False),
        _online("grpo", "grpo", "GRPO: group-normalised outcome advantage, no critic (Shao et al. 2024, DeepSeekMath)"),
        _online("dr_grpo", "dr_grpo", "Dr. GRPO: GRPO without the std division or length normalisation (Liu et al. 2025)",
                extra_checks=(_check_no_length_normalisation,)),
        _online("rloo", "rloo", "RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024)"),
        _online("reinforce_pp", "reinforce_pp", "REINFORCE++: KL in the reward, global advantage normalisation (Hu 2025)",
                grouped=False),
        _online("reinforce_pp_baseline", "reinforce_pp_baseline",
                "REINFORCE++-baseline: group-mean baseline, then global normalisation (Hu 2025)"),
        _offline("dpo", "rlhf.drivers.dpo:DPODriver", "DPO and its variants on preference pairs (Rafailov et al. 2023)",
                 _reference_roles("dpo"), "dpo", _check_dpo_smoothing),
        _offline("kto", "rlhf.drivers.kto:KTODriver",
                 "KTO: unpaired desirable/undesirable examples, prospect-theoretic loss (Ethayarajh et al. 2024)",
                 _reference_roles("kto"), "kto"),
        Algorithm(
            name="iterative_dpo",
            description="Iterative (online) DPO: each round's best vs worst sampled response per prompt "
                        "(Xiong et al. 2024; Guo et al. 2024)",
            driver="rlhf.drivers.iterative_dpo:IterativeDPODriver",
            roles=_iterative_dpo_roles,
            section="iterative_dpo",
            checks=(_check_reward, _check_groups, _check_dynamic_sampling, _check_pair_minibatches, _check_dpo_smoothing,
                    _check_moving_reference),
            samples_per_optimizer_step=_online_samples_per_step,  # mini_batch_size, counted in pairs
            optimizer_steps=_iterative_dpo_optimizer_steps,
        ),
        _offline("sft", "rlhf.drivers.sft:SFTDriver", "Supervised fine-tuning on prompt/completion data", _policy_only, None),
        _offline("rm", "rlhf.drivers.rm:RMDriver", "Reward model: Bradley-Terry on pairs (Ouyang et al. 2022) or score regression (Wang et al. 2023)",
                 _policy_only, "rm", _check_rm_full_weights),
    )
}

ALGORITHM_NAMES: tuple[str, ...] = tuple(ALGORITHMS)


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"algorithm.name: unknown algorithm {name!r}; known: {', '.join(ALGORITHM_NAMES)}") from None
