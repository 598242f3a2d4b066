"""The `algorithm` section: which algorithm runs, and each algorithm family's hyperparameters."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from rlhf.config.base import Section
from rlhf.registry import ALGORITHM_NAMES


class PPOConfig(Section):
    num_steps: int = Field(100, ge=1, description="PPO steps (one rollout batch each).")
    rollout_batch_size: int = Field(64, ge=1, description="Prompts per step.")
    samples_per_prompt: int = Field(1, ge=1, description="Responses sampled per prompt.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch.")
    mini_batch_size: int = Field(
        64, ge=1, description="Samples per optimizer step (across all data-parallel actors); iterative_dpo: pairs per step."
    )
    clip_eps: float = Field(0.2, gt=0, description="Policy ratio clip epsilon (symmetric: ratio clipped to [1-clip_eps, 1+clip_eps]).")
    # -- policy-gradient loss options (rlhf.algorithms.policy_loss), shared with the critic-free algorithms
    policy_loss_type: Literal["ppo", "gspo"] = Field(
        "ppo",
        description="Importance ratio: 'ppo' per token r_t = pi/pi_old; 'gspo' per sequence, the geometric mean of its "
        "token ratios (GSPO, arXiv 2507.18071; its paper objective also sets trainer.loss_agg_mode=seq_mean_token_mean "
        "and small clip ranges, e.g. 3e-4/4e-4).",
    )
    clip_eps_low: Optional[float] = Field(None, gt=0, lt=1, description="Lower clip: ratio >= 1 - clip_eps_low; null = clip_eps.")
    clip_eps_high: Optional[float] = Field(
        None, gt=0, description="Upper clip: ratio <= 1 + clip_eps_high; null = clip_eps. DAPO's clip-higher uses 0.28 with 0.2 below (arXiv 2503.14476)."
    )
    clip_ratio_c: Optional[float] = Field(
        3.0, gt=1, description="Dual clip for negative advantages (Ye et al. 2020): the surrogate is at least clip_ratio_c * A when A < 0; null = off."
    )
    kl_loss_coef: float = Field(
        0.0, ge=0, description="KL(policy || reference) as a loss term with this weight (as GRPO); independent of kl_coef (KL in the reward)."
    )
    kl_loss_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="Per-token KL estimator of the KL loss term (GRPO uses k3).")
    rollout_is_cap: Optional[float] = Field(
        2.0,
        gt=0,
        description="Truncated importance sampling against the rollout engine: each token's policy-gradient term is weighted by "
        "min(pi_trainer_old / pi_rollout, cap) (Yao et al. 2025), correcting engine/trainer mismatch (bf16 engines); null = off.",
    )
    value_clip: Optional[float] = Field(0.2, gt=0, description="Value clip range; null disables clipping.")
    value_loss_coef: float = Field(1.0, gt=0, description="Scale of the critic loss.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus coefficient.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount factor for GAE.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    kl_coef: float = Field(0.05, ge=0, description="Initial KL penalty coefficient.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator in the reward.")
    kl_controller: Literal["fixed", "adaptive"] = Field("fixed", description="Keep kl_coef fixed or adapt it (Ziegler et al. 2019).")
    kl_target: float = Field(6.0, gt=0, description="Adaptive controller: target KL per sequence.")
    kl_horizon: int = Field(10000, ge=1, description="Adaptive controller: horizon in samples.")
    whiten_advantages: bool = Field(True, description="GAE (ppo) only: normalise advantages to zero mean, unit variance per batch.")
    normalize_reward: bool = Field(False, description="Scale scores by a running std before shaping.")
    reward_clip: Optional[float] = Field(None, gt=0, description="Clip scores to [-reward_clip, reward_clip].")
    missing_eos_penalty: Optional[float] = Field(None, description="Subtract this from the score of responses that never emitted EOS.")
    eval_interval: int = Field(0, ge=0, description="Score the eval prompts every N steps (0 = never).")
    log_kl: bool = Field(
        True, description="Measure KL(policy || reference) every step even when kl_coef is 0; false (with kl_coef 0 and a "
        "fixed controller) starts no reference role."
    )
    dynamic_sampling: bool = Field(
        False, description="DAPO dynamic sampling: drop groups whose rewards are all equal, sample more prompts until "
        "rollout_batch_size groups remain."
    )
    dynamic_sampling_max_rounds: int = Field(
        4, ge=1, description="Dynamic sampling: at most this many generation rounds per step; a batch still short "
        "is filled with dropped groups (which carry no advantage)."
    )
    overlong_buffer: Optional[int] = Field(
        None, ge=1, description="DAPO overlong soft penalty: the last N tokens before rollout.max_new_tokens are "
        "penalised linearly, down to -overlong_penalty at the limit (null = off)."
    )
    overlong_penalty: float = Field(1.0, ge=0, description="Overlong soft penalty at max_new_tokens (DAPO: 1.0).")


class DPOConfig(Section):
    beta: float = Field(0.1, gt=0, description="Inverse temperature of the implicit reward.")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid", description="DPO loss variant; ipo uses length-averaged log-probabilities, as in its paper."
    )
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Conservative DPO / robust DPO label noise.")
    nll_coef: float = Field(0.0, ge=0, description="Weight of an NLL term on the chosen response (RPO).")
    precompute_ref_logprobs: bool = Field(
        True,
        description="Score the pairs the run's steps will visit (all of them over whole epochs; fewer when trainer."
        "max_steps ends the run earlier) and the eval pairs with the reference once before the first step (saved in "
        "<output_dir>/reference_logprobs.safetensors for resumes, which score the pairs they add). With the initial "
        "policy as reference no reference actor starts: the policy scores the pairs itself. false: a live reference "
        "actor scores each step's pairs.",
    )


class KTOConfig(Section):
    beta: float = Field(0.1, gt=0, description="Inverse temperature of the implicit reward beta * log(pi / pi_ref).")
    desirable_weight: float = Field(
        1.0, gt=0, description="lambda_D, the weight of desirable examples' losses (the paper recommends "
        "desirable_weight*n_desirable / (undesirable_weight*n_undesirable) in [1, 4/3]; outside it a warning is logged).",
    )
    undesirable_weight: float = Field(1.0, gt=0, description="lambda_U, the weight of undesirable examples' losses.")
    precompute_ref_logprobs: bool = Field(
        True,
        description="Score the examples the run's steps will visit and their mismatched KL rows with the reference once "
        "before the first step (saved in <output_dir>/reference_logprobs.safetensors for resumes); as "
        "algorithm.dpo.precompute_ref_logprobs.",
    )


class IterativeDPOConfig(Section):
    """Iterative (online) DPO: each round samples algorithm.ppo.samples_per_prompt responses to rollout_batch_size
    prompts, pairs each prompt's best and worst response by score, and trains on them with algorithm.dpo's loss in
    optimizer steps of algorithm.ppo.mini_batch_size pairs, ppo_epochs passes (rlhf/drivers/iterative_dpo.py)."""

    reference_update: Literal["never", "every_round"] = Field(
        "never",
        description="'never': the reference is frozen (model.reference, or the initial policy) and a reference actor "
        "scores the pairs; 'every_round': the reference moves to the policy at the start of each round, so the policy "
        "scores the pairs itself before the round's update and no reference actor starts.",
    )


class RMConfig(Section):
    objective: Literal["bradley_terry", "regression"] = Field(
        "bradley_terry",
        description="What the reward model learns: 'bradley_terry' ranks preference pairs (Ouyang et al. 2022); 'regression' "
        "predicts a scored response's data.score_attribute with a squared error (HelpSteer rows; Wang et al. 2023).",
    )
    margin: Optional[float] = Field(None, description="Fixed margin in the Bradley-Terry loss.")
    normalize_targets: bool = Field(
        False, description="Regression: learn (score - mean) / std with the training set's mean and std, so the model "
        "scores in standard units (a zero-mean reward for PPO); loss and eval/loss are then in those units.",
    )

    @model_validator(mode="after")
    def _objective_options(self) -> "RMConfig":
        if self.objective == "regression" and self.margin is not None:
            raise ValueError("algorithm.rm.margin: a Bradley-Terry option; the regression objective has no margin")
        if self.objective == "bradley_terry" and self.normalize_targets:
            raise ValueError("algorithm.rm.normalize_targets: a regression option; set algorithm.rm.objective=regression")
        return self


class AlgorithmConfig(Section):
    name: Literal[ALGORITHM_NAMES] = Field("ppo", description="Which algorithm to run (`rlhf.registry.ALGORITHMS`).")
    ppo: PPOConfig = Field(
        default_factory=PPOConfig, description="Online RL hyperparameters (ppo, grpo, dr_grpo, rloo, reinforce_pp, ...)."
    )
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="DPO hyperparameters.")
    kto: KTOConfig = Field(default_factory=KTOConfig, description="KTO hyperparameters.")
    rm: RMConfig = Field(default_factory=RMConfig, description="Reward-model training hyperparameters.")
    iterative_dpo: IterativeDPOConfig = Field(
        default_factory=IterativeDPOConfig,
        description="Iterative DPO's own options; its sampling comes from algorithm.ppo and its loss from algorithm.dpo.",
    )
