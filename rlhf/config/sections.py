"""The config sections other than `algorithm`: models, data, rollout, resources, trainer, logging,
checkpoints and fault injection."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from rlhf.config.base import Section, suggest

ROLES = ("policy", "reference", "reward", "critic", "rollout")
# data.chat_template values that are not paths (rlhf.data.templates.CHAT_TEMPLATES plus 'tokenizer').
CHAT_TEMPLATE_NAMES = ("tokenizer", "chatml", "llama2", "zephyr")


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
                raise ValueError(f"data.columns: {ours!r} is no field of any format{suggest(ours, FIELD_NAMES)}; "
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
    share_scoring_process: bool = Field(
        False,
        description="Host the reference and the reward role in one actor process per actor index (both are frozen "
        "scorers): one process start fewer (~5 CPU-seconds on the CPU), but their scoring passes run one after the other "
        "on that process's threads, so with a large model scoring can take longer than in two processes side by side. "
        "Errors, timeouts and debug.fail_at still name each role. The two roles share a pool (as if colocated) and need "
        "the same num_actors; the process gets the sum of their resources.",
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
