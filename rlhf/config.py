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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ROLES = ("policy", "reference", "reward", "critic", "rollout")
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
        "auto", "prompt", "messages", "prompt_completion", "prompt_chosen_rejected", "chat_pairs", "hh_rlhf", "stack_exchange"
    ] = Field("auto", description="Row format; 'auto' detects it from the first row's keys.")
    apply_chat_template: bool = Field(True, description="Wrap prompts and responses with the tokenizer's chat template.")
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
    mini_batch_size: int = Field(64, ge=1, description="Samples per optimizer step (across all data-parallel actors).")
    clip_eps: float = Field(0.2, gt=0, description="Policy ratio clip epsilon.")
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
    whiten_advantages: bool = Field(True, description="Normalise advantages to zero mean, unit variance per batch.")
    normalize_reward: bool = Field(False, description="Scale scores by a running std before shaping.")
    reward_clip: Optional[float] = Field(None, gt=0, description="Clip scores to [-reward_clip, reward_clip].")
    missing_eos_penalty: Optional[float] = Field(None, description="Subtract this from the score of responses that never emitted EOS.")
    eval_interval: int = Field(0, ge=0, description="Score the eval prompts every N steps (0 = never).")


class DPOConfig(Section):
    beta: float = Field(0.1, gt=0, description="Inverse temperature of the implicit reward.")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field("sigmoid", description="DPO loss variant.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Conservative DPO / robust DPO label noise.")
    nll_coef: float = Field(0.0, ge=0, description="Weight of an NLL term on the chosen response (RPO).")
    precompute_ref_logprobs: bool = Field(False, description="Compute reference logprobs once up front and free the reference.")


class RMConfig(Section):
    margin: Optional[float] = Field(None, description="Fixed margin in the Bradley-Terry loss.")


class AlgorithmConfig(Section):
    name: Literal["ppo", "dpo", "sft", "rm"] = Field("ppo", description="Which training loop to run.")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="PPO hyperparameters.")
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="DPO hyperparameters.")
    rm: RMConfig = Field(default_factory=RMConfig, description="Reward-model training hyperparameters.")


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


class CheckpointConfig(Section):
    dir: Optional[str] = Field(None, description="Checkpoint directory; default <output_dir>/checkpoints.")
    interval: int = Field(0, ge=0, description="Save every N steps (0 = only at the end).")
    keep: int = Field(2, ge=1, description="Keep the newest N checkpoints.")
    resume: str = Field("auto", description="'auto' = newest complete checkpoint if any, 'never', or a checkpoint path.")


class RLHFConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig, description="Models.")
    data: DataConfig = Field(default_factory=DataConfig, description="Datasets.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="Algorithm and hyperparameters.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Generation.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Actors and placement.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="Optimisation.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Metrics and outputs.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Checkpoints and resume.")
    tiny_assets: Optional[str] = Field(
        None, description="CPU demos/tests: build the tiny models and datasets into this dir first if missing."
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
    algo = cfg.algorithm.name
    if not cfg.model.policy:
        raise ValueError("model.policy: required")
    if not cfg.data.train:
        raise ValueError("data.train: required")
    micro, n_policy = cfg.trainer.micro_batch_size, cfg.resources.policy.num_actors
    if algo == "ppo":
        ppo = cfg.algorithm.ppo
        if not (cfg.model.reward or cfg.model.reward_fn):
            raise ValueError("model.reward: PPO needs model.reward or model.reward_fn")
        if cfg.model.reward and cfg.model.reward_fn:
            raise ValueError("model.reward_fn: set model.reward or model.reward_fn, not both")
        if not (cfg.model.critic or cfg.model.reward):
            raise ValueError("model.critic: PPO needs a critic model (model.critic, or model.reward to start from)")
        samples = ppo.rollout_batch_size * ppo.samples_per_prompt
        if samples % ppo.mini_batch_size:
            raise ValueError(
                f"algorithm.ppo.mini_batch_size: rollout_batch_size*samples_per_prompt={samples} "
                f"is not a multiple of mini_batch_size={ppo.mini_batch_size}"
            )
        for role in ("policy", "critic"):
            n = getattr(cfg.resources, role).num_actors
            if ppo.mini_batch_size % (micro * n):
                raise ValueError(
                    f"algorithm.ppo.mini_batch_size: {ppo.mini_batch_size} is not a multiple of "
                    f"trainer.micro_batch_size*resources.{role}.num_actors={micro * n}"
                )
    else:
        if cfg.trainer.train_batch_size % (micro * n_policy):
            raise ValueError(
                f"trainer.train_batch_size: {cfg.trainer.train_batch_size} is not a multiple of "
                f"trainer.micro_batch_size*resources.policy.num_actors={micro * n_policy}"
            )
    dpo = cfg.algorithm.dpo
    if algo == "dpo" and dpo.label_smoothing and dpo.loss_type not in ("sigmoid", "robust"):
        raise ValueError(f"algorithm.dpo.label_smoothing: applies only to loss_type sigmoid and robust, not {dpo.loss_type!r}")
    if algo == "rm" and cfg.model.lora.enabled:
        raise ValueError("model.lora: reward-model training (algorithm.name=rm) trains all weights; set model.lora.enabled=false")
    if cfg.model.reference_from_base and not cfg.model.lora.enabled:
        raise ValueError("model.reference_from_base: needs model.lora.enabled=true")
    if cfg.model.reward_fn and not re.match(r"^[\w.]+:\w+$", cfg.model.reward_fn):
        raise ValueError(f"model.reward_fn: expected 'module:function', got {cfg.model.reward_fn!r}")
    for group in cfg.resources.colocate:
        for role in group:
            if role not in ROLES:
                raise ValueError(f"resources.colocate: unknown role {role!r}{_suggest(role, ROLES)}; roles are {', '.join(ROLES)}")
    if cfg.rollout.top_k == 0 or cfg.rollout.top_k < -1:
        raise ValueError("rollout.top_k: must be -1 (off) or >= 1")


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
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc)
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


def _model_at(model: type[BaseModel], path: list[str]):
    for part in path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def check_paths(cfg: RLHFConfig, source: str) -> None:
    """Model and data paths must exist unless they look like hub ids ('org/name')."""
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
