"""What every role actor shares, and the DeepSpeed-engine logic of the trainable roles (policy, critic).

One Ray actor is one data-parallel rank. The life of a trainer actor:

    actor = TrainerClass(cfg, ...)                 # loads the model on the CPU (needs no data: starts while the driver reads it)
    actor.master_address()                         # rank 0 only: (ip, free port)
    actor.setup_distributed(addr, port, rank, n, total_steps)  # all ranks at once: process group + DeepSpeed engine
    actor.<role methods>                           # scoring passes and optimizer steps, driven by the driver

`_train_on(minibatch, count_fn, loss_fn)` is one optimizer step over this rank's shard of a
minibatch: the shard is cut into micro-batches of trainer.micro_batch_size rows (or, with
trainer.micro_batch_tokens, rows grouped by length under a token budget, the same number on
every rank: `_micro_batches`); the step's loss
normalisers (token or row counts, `rlhf.algorithms.loss_agg`) are summed over every micro-batch
and rank first; then each micro-batch's loss is its *share* of the step's loss (its sum over the
step's count), so the gradient is the plain sum of the micro-batches' gradients over all ranks,
whatever the split. The last micro-batch's `engine.step()` is the optimizer step (its
gradient-accumulation boundary is set explicitly, so the number of micro-batches may vary). The counts are
all-reduced here rather than computed by the driver: only the step's loss knows which mask it is
normalised by (response tokens, label tokens, the chosen tokens of pairs), and every driver gets
the right normaliser without tensor math of its own, for one all-reduce of a few floats per step.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from rlhf.config import RLHFConfig
from rlhf.data.batch_layouts import UNTRIMMED, Layout, cut_micro_batches, find_layout, untrim_output
from rlhf.data.batch_ops import Batch, batch_size, split_batch
from rlhf.data.micro_batches import pack_by_tokens, restore_order, split_to_count
from rlhf.models.loading import device_for, load_tokenizer
from rlhf.models.saving import save_hf
from rlhf.registry import get_algorithm
from rlhf.workers.checkpoint_files import load_rng_state, save_rng_state, weights_only_deepspeed_loads
from rlhf.workers.deepspeed_config import build_deepspeed_config, build_lr_scheduler
from rlhf.workers.distributed import free_port, import_deepspeed_muon_uncompiled, init_distributed, node_ip
from rlhf.workers.threads import match_cpu_share


class MicroBatchLoss(NamedTuple):
    """What a loss function returns for one micro-batch."""

    loss: torch.Tensor  # this micro-batch's share of the step's loss (its sum / the step's count)
    shares: dict  # {metric: value} aggregated like the loss: they add up over micro-batches and ranks
    maxima: dict = {}  # {metric: value} reduced by max over micro-batches and ranks


CountFn = Callable[[Batch], "dict[str, torch.Tensor | float]"]  # micro-batch -> its part of each normaliser
LossFn = Callable[[Batch, "dict[str, float]"], MicroBatchLoss]  # (micro-batch on device, the step's counts)

CHECKPOINT_TAG = "ds"  # one DeepSpeed tag per directory: the driver gives every checkpoint its own directory


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def disable_dropout(model: nn.Module) -> None:
    """Zero the model's dropout so that PPO's ratio is exactly 1 before the first update.

    LoRA's own dropout (``lora_dropout``) is a deliberate setting and is left alone.
    """
    for name, module in model.named_modules():
        if "lora_dropout" in name:
            continue
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


class RoleWorker:
    """Methods every role's actor answers (the driver's health and placement checks)."""

    def ready(self) -> bool:
        return True

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


class TrainerBase(RoleWorker):
    """A trainable model in a DeepSpeed engine; subclasses provide `_load_model` and their role methods."""

    role = "trainer"  # the role name, in messages
    stat_prefix = "trainer"  # metric names: "<stat_prefix>/loss", ...

    def __init__(self, cfg: RLHFConfig, model_path: str):
        match_cpu_share()
        self.cfg = cfg
        self.model_path = model_path
        self.device = device_for(cfg)
        self.rank, self.world_size = 0, 1
        self.engine = None
        self.total_steps: int | None = None  # of the lr schedule, given at `setup_distributed`
        set_seed(cfg.trainer.seed)
        self.tokenizer = load_tokenizer(model_path, cfg.data.chat_template)  # saved with every checkpoint
        self.model = self._load_model(model_path)
        disable_dropout(self.model)

    # -- subclass hooks --------------------------------------------------------------------------
    def _load_model(self, path: str) -> nn.Module:
        raise NotImplementedError

    def _learning_rate(self) -> float:
        return self.cfg.trainer.learning_rate

    def _samples_per_step(self) -> int:
        """Samples per optimizer step across all ranks (the algorithm's registry entry says)."""
        return get_algorithm(self.cfg.algorithm.name).samples_per_optimizer_step(self.cfg)

    def _default_total_steps(self) -> int | None:
        """Optimizer steps in the whole run, for decaying lr schedules (None when unknown)."""
        return get_algorithm(self.cfg.algorithm.name).optimizer_steps(self.cfg)

    # -- distributed setup -----------------------------------------------------------------------
    def master_address(self) -> tuple[str, int]:
        """Rank 0: where the other ranks find it (this node's IP and a free port)."""
        return node_ip(), free_port()

    def setup_distributed(self, master_addr: str, master_port: int, rank: int, world_size: int,
                          total_steps: int | None = None) -> None:
        """Join the role's process group and build the DeepSpeed engine (every rank calls this at once).

        total_steps: optimizer steps in the whole run, for decaying lr schedules; known to the driver once it
        has read its data (offline: from the data's size). None: the algorithm's registry entry's count.
        """
        init_distributed(master_addr, master_port, rank, world_size, self.device, self.cfg.resources.call_timeout_s)
        self.rank, self.world_size = rank, world_size
        self.total_steps = total_steps if total_steps is not None else self._default_total_steps()
        self._build_engine()

    def _build_engine(self) -> None:
        import deepspeed

        import_deepspeed_muon_uncompiled()
        ds_config = build_deepspeed_config(
            self.cfg.trainer,
            dtype=self.cfg.model.dtype,
            world_size=self.world_size,
            samples_per_step=self._samples_per_step(),
            learning_rate=self._learning_rate(),
            device=self.device.type,
        )
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.engine, *_ = deepspeed.initialize(
            model=self.model,
            model_parameters=trainable,
            config=ds_config,
            lr_scheduler=build_lr_scheduler(self.cfg.trainer, self.total_steps),
        )

    @property
    def module(self) -> nn.Module:
        """The model (inside the engine once there is one)."""
        return self.engine.module if self.engine is not None else self.model

    @property
    def zero3(self) -> bool:
        return self.engine is not None and self.engine.zero_optimization_stage() == 3

    def _require_engine(self):
        if self.engine is None:
            raise RuntimeError(f"{self.role}: call setup_distributed(...) before using the trainer")
        return self.engine

    def _gather(self, params: list[nn.Parameter]):
        """Context in which ``params`` are complete on every rank (ZeRO-3); collective: all ranks enter it."""
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    # -- forward passes without gradients ---------------------------------------------------------
    @torch.no_grad()
    def _forward_no_grad(self, batch: Batch, fn: Callable[[nn.Module, Batch], torch.Tensor]) -> torch.Tensor:
        """fn(module, micro_batch) of every micro-batch, joined in the batch's row order, on the CPU in float32.

        With trainer.micro_batch_tokens, per-token outputs of a trimmed rollout micro-batch are padded
        back to the batch's R with zeros (`rlhf.data.batch_layouts.untrim_output`).

        Under ZeRO-3 every forward gathers parameters collectively, so every rank runs the same
        number of forwards: ranks with fewer micro-batches repeat one and drop the result.
        """
        self._require_engine()
        module = self.module
        was_training = module.training
        module.eval()
        micro, rows, layout = self._micro_batches(batch, same_count_on_every_rank=False)
        passes = len(micro)
        if self.zero3 and self.world_size > 1:
            passes = int(self._reduce_across_ranks({"passes": passes}, "max")["passes"])
        outputs = []
        try:
            for i in range(passes):
                mb = micro[i] if i < len(micro) else (micro[-1] if micro else _dummy_row(batch))
                out = fn(module, to_device(mb, self.device)).float().cpu()
                if i < len(micro):
                    outputs.append(untrim_output(layout, out, batch))
        finally:
            module.train(was_training)
        if not outputs:
            return torch.empty((0, *batch["response_mask"].shape[1:]) if "response_mask" in batch else (0,))
        return restore_order(outputs, rows)

    def _micro_batches(self, batch: Batch, same_count_on_every_rank: bool) -> tuple[list[Batch], list[list[int]], Layout]:
        """This rank's micro-batches of ``batch``, the rows of each, and the layout they were trimmed by.

        By default, consecutive runs of trainer.micro_batch_size rows. With trainer.micro_batch_tokens, rows
        grouped by length under that budget and at most micro_batch_size rows each (`rlhf.data.micro_batches`),
        each micro-batch cut to the columns its rows need (`rlhf.data.batch_layouts`). same_count_on_every_rank:
        ranks with fewer micro-batches split theirs until all ranks have as many (collective: every rank calls).
        """
        trainer = self.cfg.trainer
        n = batch_size(batch)
        if trainer.micro_batch_tokens is None or not n:
            size = trainer.micro_batch_size
            rows = [list(range(start, min(start + size, n))) for start in range(0, n, size)]
            return split_batch(batch, size) if n else [], rows, UNTRIMMED
        layout, extents = find_layout(batch)
        lengths = extents.tolist()
        per_row = layout.sequences_per_row
        rows = pack_by_tokens(lengths, trainer.micro_batch_tokens, trainer.micro_batch_size, per_row)
        if same_count_on_every_rank and self.world_size > 1:
            count = int(self._reduce_across_ranks({"micro_batches": len(rows)}, "max")["micro_batches"])
            rows = split_to_count(rows, lengths, count, per_row)
        return cut_micro_batches(layout, batch, extents, rows), rows, layout

    # -- one optimizer step ------------------------------------------------------------------------
    def _train_on(self, minibatch: Batch, count_fn: CountFn, loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step on this rank's shard; returns the step's metrics, the same on every rank.

        count_fn(micro_batch) -> {name: its part of a normaliser}; summed over this rank's micro-batches
        and all ranks into the step's counts. loss_fn(micro_batch on device, counts) -> MicroBatchLoss.
        Adds "<stat_prefix>/grad_norm" (before clipping) and "<stat_prefix>/lr" (the lr this step used).
        """
        engine = self._require_engine()
        micro_size = self.cfg.trainer.micro_batch_size
        expected = engine.gradient_accumulation_steps()
        if batch_size(minibatch) != expected * micro_size:
            raise ValueError(
                f"{self.role} rank {self.rank}: got {batch_size(minibatch)} samples, expected "
                f"{expected} micro-batches of {micro_size} (samples per step / ranks)"
            )
        micro, _, _ = self._micro_batches(minibatch, same_count_on_every_rank=True)
        local_counts: dict[str, float] = {}
        for mb in micro:
            for name, value in count_fn(mb).items():
                local_counts[name] = local_counts.get(name, 0.0) + float(value)
        counts = self._reduce_across_ranks(local_counts, "sum")
        engine.train()
        lr = float(engine.get_lr()[0])
        shares: dict[str, float] = {}
        maxima: dict[str, float] = {}
        fallback_norm = None
        for i, mb in enumerate(micro):
            last = i == len(micro) - 1
            # The step ends at this rank's last micro-batch, however many there are (token-budget
            # micro-batches vary in number from step to step); every rank has as many.
            engine.set_gradient_accumulation_boundary(last)
            loss, mb_shares, mb_maxima = loss_fn(to_device(mb, self.device), counts)
            # The shares already sum to the step's loss: undo DeepSpeed's 1/accumulation scaling
            # (scale_wrt_gas=False) and its averaging of gradients over the data-parallel ranks.
            engine.backward(loss * self.world_size, scale_wrt_gas=False)
            if last and self.cfg.trainer.zero_stage == 0:
                fallback_norm = self._local_grad_norm()  # stage 0 fp32 reports no norm; grads are reduced by now
            engine.step()
            for key, value in mb_shares.items():
                shares[key] = shares.get(key, 0.0) + float(value)
            for key, value in mb_maxima.items():
                maxima[key] = max(maxima.get(key, float("-inf")), float(value))
        stats = {**self._reduce_across_ranks(shares, "sum"), **self._reduce_across_ranks(maxima, "max")}
        grad_norm = engine.get_global_grad_norm()
        if grad_norm is None:
            grad_norm = fallback_norm
        stats[f"{self.stat_prefix}/grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        stats[f"{self.stat_prefix}/lr"] = lr
        return stats

    def _local_grad_norm(self) -> float | None:
        grads = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else None

    def _reduce_across_ranks(self, values: dict[str, float], op: str) -> dict[str, float]:
        """{name: value} summed ("sum") or maximised ("max") over all ranks, in float64; every rank calls."""
        if self.world_size == 1 or not values:
            return values
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return dict(zip(keys, t.tolist()))

    # -- checkpoints ----------------------------------------------------------------------------------
    def _has_frozen_parameters(self) -> bool:
        return any(not p.requires_grad for p in self.module.parameters())

    def save_checkpoint(self, path: str) -> str:
        """DeepSpeed engine state (weights, optimizer, lr scheduler) into ``path``; all ranks call.

        Frozen weights (a LoRA base) are not written: they are reloaded from the model path.
        """
        engine = self._require_engine()
        engine.save_checkpoint(path, tag=CHECKPOINT_TAG, exclude_frozen_parameters=self._has_frozen_parameters())
        save_rng_state(self._rng_path(path))
        return path

    def _rng_path(self, path: str) -> str:
        return os.path.join(path, f"rng_rank{self.rank}.pt")

    def load_checkpoint(self, path: str) -> str:
        """Restore what `save_checkpoint` wrote, into a freshly built engine; all ranks call."""
        engine = self._require_engine()
        if not os.path.isdir(os.path.join(path, CHECKPOINT_TAG)):
            raise FileNotFoundError(f"{self.role}: no DeepSpeed checkpoint (tag {CHECKPOINT_TAG!r}) in {path}")
        with weights_only_deepspeed_loads(engine):  # checkpoint files are data, never pickled code
            loaded, _ = engine.load_checkpoint(
                path,
                tag=CHECKPOINT_TAG,
                load_module_strict=not self._has_frozen_parameters(),
                load_optimizer_states=True,
                load_lr_scheduler_states=True,
            )
        if loaded is None:
            raise FileNotFoundError(f"{self.role}: no DeepSpeed checkpoint (tag {CHECKPOINT_TAG!r}) in {path}")
        if os.path.isfile(self._rng_path(path)):
            load_rng_state(self._rng_path(path))
        return path

    def save_pretrained(self, path: str) -> str | None:
        """Rank 0 writes the model in Hugging Face format (`rlhf.models.saving.save_hf`).

        Under ZeRO-3 the weights are gathered collectively, so every rank must call this
        (`WorkerGroup.run_all`); under ZeRO 0-2 calling rank 0 alone is enough.
        """
        self._require_engine()
        with self._gather(list(self.module.parameters())):
            if self.rank == 0:
                save_hf(self.module, self.tokenizer, path)
                return path
        return None


def _dummy_row(batch: Batch) -> Batch:
    """A stand-in row of ones shaped like ``batch``, for a ZeRO-3 rank with no rows of its own to forward."""
    row = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            row[key] = torch.ones((1, *value.shape[1:]), dtype=value.dtype)
        elif isinstance(value, (list, tuple)):
            row[key] = [""]
        else:
            row[key] = value
    return row
