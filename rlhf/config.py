"""The typed config tree: loaded from YAML, overridden by `key.sub=value`, validated once at load.

Every field has a default and a one-line description (pydantic `Field(description=...)`).
`load_config` turns every problem (unknown key, wrong type, value out of range, missing
path, inconsistent batch sizes) into one `ConfigError` line naming the key and the file.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlhf.registry import ALGORITHM_NAMES, get_algorithm
from rlhf.tiny import FAMILIES as TINY_FAMILIES

ROLES = ("policy", "reference", "reward", "critic", "rollout")
# data.chat_template values that are not paths (rlhf.data.templates.CHAT_TEMPLATES plus 'tokenizer').
CHAT_TEMPLATE_NAMES = ("tokenizer", "chatml", "llama2", "zephyr")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ConfigError(ValueError):
    """A config problem, reported to the user as one line."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(Section):
    enabled: bool = Field(False, description="Train a LoRA adapter (peft) instead of all policy weights.")
    rank: int = Field(8, ge=1, description="LoRA rank r.")
    alpha: int = Field(16, ge=1, description="LoRA scaling alpha (update is scaled by alpha / rank).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names that get LoRA adapters.",
    )


class ModelConfig(Section):
    policy: str = Field("", description="Path (or hub id) of the policy model, Hugging Face format.")
    reference: Optional[str] = Field(None, description="Reference model; defaults to the initial policy.")
    reward: Optional[str] = Field(None, description="Reward model (sequence classification, 1 label).")
    reward_fn: Optional[str] = Field(
        None, description="Rule reward 'module:function' called as fn(prompt, response) -> float; used instead of `reward`."
    )
    critic: Optional[str] = Field(None, description="Value model (token classification, 1 label); defaults to the reward model.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("bfloat16", description="Parameter dtype of all roles.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings for the policy.")
    reference_from_base: bool = Field(
        False, description="With LoRA: the reference is the policy's base model with the adapter disabled (no extra copy)."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")


class DataConfig(Section):
    train: str = Field("", description="Training data: a .jsonl/.json/.parquet file, a datasets.save_to_disk dir, or a hub name.")
    eval: Optional[str] = Field(None, description="Held-out data in the same format as `train`.")
    format: Literal[
        "auto", "prompt", "messages", "prompt_completion", "openorca", "alpaca", "sharegpt", "oasst_tree",
        "prompt_chosen_rejected", "chat_pairs", "hh_rlhf", "stack_exchange", "orca_dpo_pairs", "ultrafeedback",
        "helpsteer", "ranked", "unpaired",
    ] = Field("auto", description="Row format (table in rlhf/data/formats.py); 'auto' detects it from the first row's keys.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Our field name -> this file's column name, applied before detection, e.g. {prompt: question, completion: answer}.",
    )
    apply_chat_template: bool = Field(True, description="Wrap prompts and responses with the chat template.")

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, columns: dict[str, str]) -> dict[str, str]:
        from rlhf.data.formats import FIELD_NAMES  # imported here: the data layer imports this module

        for ours in columns:
            if ours not in FIELD_NAMES:
                raise ValueError(f"data.columns: {ours!r} is no field of any format{_suggest(ours, FIELD_NAMES)}; "
                                 f"fields: {', '.join(sorted(FIELD_NAMES))}")
        return columns
    chat_template: str = Field(
        "tokenizer",
        description="The chat template: 'tokenizer' (its own), 'chatml', 'llama2', 'zephyr', or a path to a Jinja file; "
        "saved with every checkpoint's tokenizer.",
    )
    system_prompt: Optional[str] = Field(None, description="Prepended as a system turn to conversations that have none.")
    pairing: Literal["all", "best_vs_rest", "best_vs_worst"] = Field(
        "all", description="Pairs from scored/ranked responses: all K(K-1)/2, the best vs each lower one, or best vs worst."
    )
    score_attribute: Optional[str] = Field(
        None, description="Score that ranks responses: UltraFeedback 'overall_score' (default), 'fine-grained_score' or an "
        "aspect; a HelpSteer attribute ('helpfulness', default), also the target of algorithm.rm.objective=regression."
    )
    max_prompt_len: int = Field(256, ge=1, description="Prompt token limit.")
    max_response_len: int = Field(256, ge=1, description="Response token limit for SFT/DPO/RM data.")
    truncation: Literal["error", "left", "right"] = Field(
        "error",
        description="Over-long rows: 'error' reports them (see on_error); 'left' drops the prompt's oldest tokens and "
        "cuts the response's tail; 'right' cuts the tails of both.",
    )
    on_error: Literal["raise", "skip"] = Field("raise", description="A malformed row: stop with file/row/reason, or skip it and count.")
    shuffle: bool = Field(True, description="Shuffle the training data every epoch (seeded).")
    max_samples: Optional[int] = Field(None, ge=1, description="Use at most this many training rows.")


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


class RolloutConfig(Section):
    backend: Literal["vllm", "hf"] = Field("vllm", description="Generation engine: vLLM, or transformers.generate for debugging.")
    num_engines: int = Field(1, ge=1, description="Number of rollout engines.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM engine.")
    max_new_tokens: int = Field(128, ge=1, description="Response length limit in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (the trainer uses the same for logprobs).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    top_k: int = Field(-1, description="Top-k sampling (-1 = off).")
    stop: list[str] = Field(default_factory=list, description="Extra stop strings besides EOS.")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM memory fraction (host memory on CPU).")
    kv_cache_gib: int = Field(1, ge=1, description="CPU only: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE).")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs in vLLM.")
    # CPU 'auto' = object_store: measured here (scripts/bench_sync.py, 96 MiB fp32) 774 MiB/s vs gloo broadcast 432 MiB/s
    # at the default 256 MiB buckets; broadcast only catches up with 4 MiB buckets (801 vs 805 MiB/s best cases).
    sync_transport: Literal["auto", "object_store", "broadcast", "ipc"] = Field(
        "auto",
        description="Weight-sync transport: broadcast (gloo on CPU / NCCL on CUDA), ipc (engines on the trainer's GPU), "
        "object_store; 'auto' = broadcast on GPUs, ipc when colocated with the policy, object_store on the CPU.",
    )
    sync_bucket_mb: float = Field(
        256.0, gt=0, description="Weight-sync bucket size in MiB: the unit sent, loaded and (ZeRO-3) gathered at once."
    )
    sleep_while_training: bool = Field(
        False, description="GPU only: vLLM sleep mode level 1 (weights to host memory, KV cache freed) from generation "
        "until the next weight sync, so a colocated trainer can use the GPU (resources.colocate, single-GPU runs).",
    )
    sync_timeout_s: float = Field(
        300.0, gt=0, description="Limit on every wait of a weight sync (rendezvous, metadata, each bucket); the error names role and bucket."
    )
    logprob_check_tolerance: Optional[float] = Field(
        None, gt=0, description="Stop the run if rollout vs trainer logprob max diff exceeds this."
    )
    max_engine_restarts: int = Field(
        3, ge=0, description="Engines that die or hang are restarted, re-synced and their generation retried, at most this many times per run."
    )


class RoleResources(Section):
    num_actors: int = Field(1, ge=1, description="Actors for this role (data-parallel ranks, or engines).")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per actor (fractions when colocated).")
    cpus_per_actor: float = Field(1.0, ge=0, description="CPUs per actor (fractions allowed).")


class ResourcesConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' uses CUDA when the cluster has GPUs.")
    policy: RoleResources = Field(default_factory=RoleResources, description="Policy trainer actors.")
    reference: RoleResources = Field(default_factory=RoleResources, description="Reference model actors.")
    reward: RoleResources = Field(default_factory=RoleResources, description="Reward model actors.")
    critic: RoleResources = Field(default_factory=RoleResources, description="Value model actors.")
    rollout: RoleResources = Field(default_factory=RoleResources, description="Per rollout engine (num_actors is taken from rollout.num_engines).")
    colocate: list[list[str]] = Field(
        default_factory=list, description="Groups of roles that share one placement group bundle set, e.g. [[policy, reference]]."
    )
    placement_timeout_s: float = Field(60.0, gt=0, description="Give up if placement groups are not ready in this time.")
    call_timeout_s: float = Field(600.0, gt=0, description="Timeout for every remote call; the error names the role.")
    startup_timeout_s: Optional[float] = Field(
        None, gt=0, description="Timeout for actors to start (load models, form process groups); null = call_timeout_s."
    )
    ray_address: Optional[str] = Field(None, description="Ray address; default: RAY_ADDRESS or the job's cluster, else a local one.")


class TrainerConfig(Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    zero3_persistence_threshold: int = Field(
        100_000, ge=0, description="ZeRO-3: parameters with fewer elements stay whole on every rank (DeepSpeed's default)."
    )
    learning_rate: float = Field(1e-6, gt=0, description="Policy learning rate.")
    critic_learning_rate: float = Field(5e-6, gt=0, description="Critic learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    lr_scheduler: Literal["constant", "cosine", "linear"] = Field("constant", description="Learning-rate schedule after warmup.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup in optimizer steps.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    micro_batch_size: int = Field(4, ge=1, description="Samples per forward/backward on each actor.")
    micro_batch_tokens: Optional[int] = Field(
        None, ge=1,
        description="Token budget per forward/backward on each actor (null = fixed micro_batch_size rows). When set, a "
        "trainer's rows are grouped by length into micro-batches whose padded size (rows x sequences per row, 2 for "
        "preference pairs, x the widest row once the columns no row needs are trimmed) stays within it; a longer row goes "
        "alone. micro_batch_size is then the most rows in one micro-batch (it still sets the samples per step each actor "
        "must get). The update is the same either way: losses are normalised over the whole step (loss_agg_mode).",
    )
    loss_agg_mode: Literal["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"] = Field(
        "token_mean",
        description="How per-token losses (PPO policy/value/entropy, SFT, the DPO NLL term) are aggregated over the whole "
        "optimizer step, across micro-batches and actors, so the update does not depend on the split. With loss l, mask m, "
        "n_b = sum_t m[b,t]: token_mean = sum_{b,t} m*l / sum_{b,t} m; seq_mean_token_sum = sum_b sum_t m*l / #rows; "
        "seq_mean_token_mean = sum_b (sum_t m*l / n_b) / #rows (rows with n_b > 0). Per-pair losses (DPO, RM) are means over pairs.",
    )
    train_batch_size: int = Field(32, ge=1, description="SFT/DPO/RM: samples (or pairs) per optimizer step across actors.")
    num_epochs: int = Field(1, ge=1, description="SFT/DPO/RM: passes over the training data.")
    max_steps: Optional[int] = Field(None, ge=1, description="SFT/DPO/RM: stop after this many optimizer steps.")
    eval_interval: int = Field(0, ge=0, description="SFT/DPO/RM: evaluate on data.eval every N steps (0 = at the end only).")
    seed: int = Field(42, description="Seed for data order, sampling and initialisation.")


class WandbConfig(Section):
    mode: Literal["disabled", "offline", "online"] = Field("disabled", description="'online' needs WANDB_API_KEY; else offline.")
    project: str = Field("rlhf", description="wandb project.")
    run_name: Optional[str] = Field(None, description="wandb run name.")


class LoggingConfig(Section):
    output_dir: str = Field("outputs/run", description="Where metrics.jsonl, checkpoints and the final model go.")
    wandb: WandbConfig = Field(default_factory=WandbConfig, description="Weights & Biases logging.")
    progress_bar: bool = Field(True, description="Show a progress bar on the console.")
    log_interval: int = Field(10, ge=1, description="Print one line of metrics on the console every N steps.")
    verbose: bool = Field(
        False, description="Show vLLM's, DeepSpeed's and Ray's own log lines on the console instead of <output_dir>/logs/."
    )


class CheckpointConfig(Section):
    dir: Optional[str] = Field(None, description="Checkpoint directory; default <output_dir>/checkpoints.")
    interval: int = Field(0, ge=0, description="Save every N steps (0 = only at the end).")
    keep: int = Field(2, ge=1, description="Keep the newest N checkpoints.")
    resume: str = Field("auto", description="'auto' = newest complete checkpoint if any, 'never', or a checkpoint path.")


DRIVER_FAULT_METHODS = ("train_step", "save_checkpoint")


class FailAtConfig(Section):
    role: Literal["driver", "policy", "reference", "reward", "critic", "rollout"] = Field(
        ..., description="Who fails: a role's actor, or the driver process itself."
    )
    step: int = Field(..., ge=1, description="The training step during which the fault happens.")
    method: Optional[str] = Field(
        None,
        description="The driver-called method that fails (e.g. values, ppo_step, generate, load_weights); null = the "
        "role's first call in that step. Role driver: train_step (start of the step) or save_checkpoint (right after "
        "that step's checkpoint is complete).",
    )
    mode: Literal["raise", "exit", "hang", "sigterm"] = Field(
        "raise",
        description="raise: an exception inside the actor; exit: the process ends at once (os._exit(1)); hang: the call "
        "blocks past resources.call_timeout_s; sigterm (driver only): the driver is sent SIGTERM, as by a preemption.",
    )
    actor: int = Field(0, ge=0, description="Which actor of the role (data-parallel rank or engine index).")


class DebugConfig(Section):
    fail_at: list[FailAtConfig] = Field(
        default_factory=list,
        description="Deterministic fault injection for tests and drills: make an actor or the driver fail at an exact step. "
        "One fault (a mapping) or several (a list of mappings, each firing once), e.g. an engine lost at step 2 and a "
        "preemption at step 3 of the same run.",
    )

    @field_validator("fail_at", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        """A single mapping (the common case, and what `debug.fail_at.role=...` overrides build) is a list of one."""
        if value is None:
            return []
        return [value] if isinstance(value, dict) else value


class RLHFConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig, description="Models.")
    data: DataConfig = Field(default_factory=DataConfig, description="Datasets.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="Algorithm and hyperparameters.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Generation.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Actors and placement.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="Optimisation.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Metrics and outputs.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Checkpoints and resume.")
    debug: DebugConfig = Field(default_factory=DebugConfig, description="Fault injection (tests, drills).")
    tiny_assets: Optional[str] = Field(
        None, description="CPU demos/tests: build the tiny models and datasets into this dir first if missing."
    )
    tiny_family: Literal[TINY_FAMILIES] = Field(
        "char", description="Model family of the tiny_assets build (rlhf.tiny): char, llama3, qwen2 or mistral."
    )

    @model_validator(mode="after")
    def _consistent(self) -> "RLHFConfig":
        _check_consistency(self)
        return self

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or os.path.join(self.logging.output_dir, "checkpoints")


def _check_consistency(cfg: RLHFConfig) -> None:
    """Cross-field rules; raises ValueError('key: reason') so the loader can prefix the file."""
    if not cfg.model.policy:
        raise ValueError("model.policy: required")
    if not cfg.data.train:
        raise ValueError("data.train: required")
    get_algorithm(cfg.algorithm.name).check(cfg)
    if cfg.model.reference_from_base and not cfg.model.lora.enabled:
        raise ValueError("model.reference_from_base: needs model.lora.enabled=true")
    if cfg.model.reward_fn and not re.match(r"^[\w.]+:\w+$", cfg.model.reward_fn):
        raise ValueError(f"model.reward_fn: expected 'module:function', got {cfg.model.reward_fn!r}")
    for group in cfg.resources.colocate:
        for role in group:
            if role not in ROLES:
                raise ValueError(f"resources.colocate: unknown role {role!r}{_suggest(role, ROLES)}; roles are {', '.join(ROLES)}")
    for role in ROLES:
        res = getattr(cfg.resources, role)
        if res.cpus_per_actor == 0 and res.gpus_per_actor == 0:
            raise ValueError(f"resources.{role}.cpus_per_actor: an actor needs CPUs or GPUs, and this role has neither")
    if cfg.rollout.top_k == 0 or cfg.rollout.top_k < -1:
        raise ValueError("rollout.top_k: must be -1 (off) or >= 1")
    for index, fail in enumerate(cfg.debug.fail_at):
        key = f"debug.fail_at[{index}]"
        _check_fail_at(cfg, fail, key)
        roles = get_algorithm(cfg.algorithm.name).roles(cfg)
        if fail.role not in ("driver", *roles):
            raise ValueError(f"{key}.role: {cfg.algorithm.name} starts no {fail.role} actor here "
                             f"(its roles: {', '.join(roles)})")


def _check_fail_at(cfg: RLHFConfig, fail: FailAtConfig, key: str) -> None:
    if fail.role == "driver":
        if fail.mode == "hang":
            raise ValueError(f"{key}.mode: the driver cannot hang (nothing would time it out); use raise, exit or sigterm")
        if fail.actor != 0:
            raise ValueError(f"{key}.actor: the driver is one process; actor must be 0")
        if fail.method is not None and fail.method not in DRIVER_FAULT_METHODS:
            raise ValueError(
                f"{key}.method: driver points are {', '.join(DRIVER_FAULT_METHODS)}, not {fail.method!r}"
                f"{_suggest(fail.method, DRIVER_FAULT_METHODS)}"
            )
        return
    if fail.mode == "sigterm":
        raise ValueError(f"{key}.mode: sigterm applies to role driver only")
    num = cfg.rollout.num_engines if fail.role == "rollout" else getattr(cfg.resources, fail.role).num_actors
    if fail.actor >= num:
        raise ValueError(f"{key}.actor: {fail.role} has {num} actor(s), so actor must be < {num}, got {fail.actor}")


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_scalar(text: str) -> Any:
    """Parse an override value the way YAML would ('3' -> 3, 'true' -> True, '[a, b]' -> list)."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides to a nested dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(value)
    return raw


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"] if not isinstance(p, int)]
    key = _key_name(first["loc"])
    if first["type"] == "extra_forbidden":
        section = _model_at(RLHFConfig, loc[:-1])
        known = list(section.model_fields) if section else []
        return f"{source}: unknown key '{key}'{_suggest(loc[-1], known)}"
    msg = first["msg"]
    if msg.startswith("Value error, "):
        return f"{source}: {msg[len('Value error, '):]}"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{source}: {key}: {msg}{shown}"


def _key_name(loc: tuple) -> str:
    """A validation error's location as the user's key: list positions in brackets (`debug.fail_at[1].step`)."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _model_at(model: type[BaseModel], path: list[str]):
    """The section model at a key path (list-valued fields: their item model), or None."""
    for part in path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if getattr(annotation, "__origin__", None) is list:
            annotation = annotation.__args__[0]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def check_paths(cfg: RLHFConfig, source: str) -> None:
    """Model and data paths must exist unless they look like hub ids ('org/name'); data.chat_template
    must name a template or an existing file."""
    candidates = {
        "model.policy": cfg.model.policy,
        "model.reference": cfg.model.reference,
        "model.reward": cfg.model.reward,
        "model.critic": cfg.model.critic,
        "data.train": cfg.data.train,
        "data.eval": cfg.data.eval,
    }
    for key, value in candidates.items():
        if value and not os.path.exists(value) and not _HUB_ID.match(value):
            raise ConfigError(f"{source}: {key}: path does not exist: {value}")
    template = cfg.data.chat_template
    if template not in CHAT_TEMPLATE_NAMES and not os.path.isfile(template):
        raise ConfigError(f"{source}: data.chat_template: {template!r} is neither one of {', '.join(CHAT_TEMPLATE_NAMES)} "
                          "nor an existing Jinja file")


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None, validate_paths: bool = True) -> RLHFConfig:
    """Load YAML at `path` (or defaults when None), apply overrides, validate; raise ConfigError on any problem."""
    source = str(path) if path else "<defaults>"
    raw: dict = {}
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: invalid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    try:
        cfg = RLHFConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    if validate_paths and not cfg.tiny_assets:
        check_paths(cfg, source)
    return cfg


def to_yaml(cfg: RLHFConfig) -> str:
    """The resolved config as YAML (for --print-config and for saving beside checkpoints)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
