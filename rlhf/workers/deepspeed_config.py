"""The DeepSpeed config dict and the learning-rate schedule of a trainable role, from `TrainerConfig`.

Optimizer. AdamW with the configured lr, betas and weight decay. On the CPU it is
`torch.optim.AdamW` (DeepSpeed's ``torch_adam`` flag): DeepSpeed's default, FusedAdam, is a C++
op JIT-built on first use, which took ~290 s on this 2-core machine (cached afterwards in
~/.cache/torch_extensions) and was no faster per step on a tiny model. On GPUs FusedAdam is kept.

Schedule. A `LambdaLR` multiplier over optimizer steps (DeepSpeed's own WarmupLR forces at least
2 warmup steps and starts at lr 0, so it cannot express "no warmup"):

    warmup   (step < W):  (step + 1) / W              reaches 1 on the last warmup step
    constant (after W):   1
    linear   (after W):   1 - (step - W) / (T - W)    T = total optimizer steps
    cosine   (after W):   0.5 * (1 + cos(pi * (step - W) / (T - W)))

floored at 0. `step` counts optimizer steps from 0, the step about to be taken.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rlhf.config import TrainerConfig

_NEVER = 10**12  # steps_per_print: our metrics replace DeepSpeed's console prints


def gradient_accumulation_steps(samples_per_step: int, micro_batch_size: int, world_size: int) -> int:
    """Micro-batches per rank per optimizer step; raises when the batch does not divide evenly."""
    per_pass = micro_batch_size * world_size
    if samples_per_step % per_pass:
        raise ValueError(
            f"{samples_per_step} samples per optimizer step is not a multiple of "
            f"micro_batch_size*world_size = {micro_batch_size}*{world_size}"
        )
    return samples_per_step // per_pass


def build_deepspeed_config(
    trainer: TrainerConfig,
    *,
    dtype: str,
    world_size: int,
    samples_per_step: int,
    learning_rate: float,
    device: str = "cpu",
) -> dict:
    """The DeepSpeed config for one engine.

    samples_per_step: samples per optimizer step across all ranks (PPO: mini_batch_size;
    SFT/DPO/RM: train_batch_size). The scheduler is not in here: see `build_lr_scheduler`.
    """
    if dtype == "float16" and device == "cpu":
        raise ValueError("model.dtype=float16 needs a GPU (no fp16 training on the CPU); use bfloat16 or float32")
    micro = trainer.micro_batch_size
    gas = gradient_accumulation_steps(samples_per_step, micro, world_size)
    optimizer_params = {
        "lr": learning_rate,
        "betas": list(trainer.adam_betas),
        "weight_decay": trainer.weight_decay,
        "eps": 1e-8,
    }
    if device == "cpu":
        optimizer_params["torch_adam"] = True
    return {
        "train_batch_size": micro * gas * world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": trainer.max_grad_norm,
        "zero_optimization": {"stage": trainer.zero_stage, "stage3_param_persistence_threshold": trainer.zero3_persistence_threshold},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16", "loss_scale": 0, "initial_scale_power": 16},
        "optimizer": {"type": "AdamW", "params": optimizer_params},
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
    }


def lr_multiplier(trainer: TrainerConfig, total_steps: int | None) -> Callable[[int], float]:
    """step -> lr factor, as in the module doc. Decaying schedules need ``total_steps``."""
    warmup, kind = trainer.warmup_steps, trainer.lr_scheduler
    if kind != "constant" and not total_steps:
        raise ValueError(f"trainer.lr_scheduler={kind} needs the total number of optimizer steps")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def build_lr_scheduler(trainer: TrainerConfig, total_steps: int | None):
    """A callable optimizer -> LambdaLR, the form `deepspeed.initialize(lr_scheduler=...)` accepts
    when DeepSpeed builds the optimizer itself. DeepSpeed steps it once per optimizer step and
    saves its state in checkpoints."""
    from torch.optim.lr_scheduler import LambdaLR

    factor = lr_multiplier(trainer, total_steps)
    return lambda optimizer: LambdaLR(optimizer, factor)
