"""Offline training (SFT, reward modelling, DPO): a fixed dataset, one optimizer step per batch.

The lifecycle (placement, roles, resume, loop, checkpoints, metrics, summary, shutdown) is
`lifecycle.Driver`'s; this module adds what offline algorithms share:

1. The trained model as `resources.policy.num_actors` data-parallel DeepSpeed ranks in the policy
   pool (`create_roles`; DPO adds its reference), started first.
2. Meanwhile data.train and data.eval are loaded and tokenized (`read_data`; a bad row fails with its
   file and row and removes the actors; data.max_samples limits the training set only); the
   trainer's lr schedule gets the run's steps at its set-up (`optimizer_steps`).
3. Steps: each takes the next trainer.train_batch_size examples (pairs, for DPO and RM) from the
   `EpochSampler`, epoch after epoch, and is one optimizer step across the ranks (`train_step`).
   The run has num_epochs * (examples // train_batch_size) steps, or trainer.max_steps if fewer.
   Resuming restores the sampler, so the resumed run takes exactly the batches the uninterrupted
   one would have.
4. Eval on data.eval (`evaluate`): before the first step (logged as step 0), every
   trainer.eval_interval steps and after the last step; the eval metrics join that step's row.
5. The final model in Hugging Face format in <output_dir>/<model_dir>.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from rlhf.config import RLHFConfig
from rlhf.data.datasets import EpochSampler, TokenizedDataset
from rlhf.data.errors import DataError
from rlhf.drivers.lifecycle import Driver
from rlhf.models.loading import load_tokenizer
from rlhf.workers.group import WorkerGroup

Loader = Callable[..., TokenizedDataset]


def load_splits(cfg: RLHFConfig, tokenizer, loader: Loader) -> tuple[TokenizedDataset, TokenizedDataset | None]:
    """(train, eval or None) through ``loader`` (e.g. `load_preference_dataset`); max_samples applies to train only."""
    train = loader(cfg.data.train, tokenizer, cfg.data)
    held_out = None
    if cfg.data.eval:
        held_out = loader(cfg.data.eval, tokenizer, cfg.data.model_copy(update={"max_samples": None}))
    return train, held_out


def planned_steps(num_examples: int, cfg: RLHFConfig) -> int:
    """Optimizer steps of the run: num_epochs full epochs of train_batch_size examples, capped by max_steps."""
    t = cfg.trainer
    steps = t.num_epochs * (num_examples // t.train_batch_size)
    return min(steps, t.max_steps) if t.max_steps else steps


def chunks(items: Sequence, size: int) -> Iterator[list]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


class OfflineDriver(Driver):
    """The loop of an offline algorithm; subclasses give the data, the roles, one step and the eval."""

    name = "offline"  # in the summary: SFT, RM, DPO
    trainer_role = "policy"  # the trained model's role name: in errors, and its checkpoint subdirectory
    model_dir = "policy"  # the final model: <output_dir>/<model_dir>
    progress_keys: tuple[str, ...] = ("loss",)
    summary_keys: tuple[str, ...] = ("loss",)

    def __init__(self, cfg: RLHFConfig):
        super().__init__(cfg)
        self.eval_batch_size = cfg.trainer.train_batch_size
        self.tokenizer = None  # `read_data`'s: the policy's tokenizer
        self.pad_id: int | None = None
        self.train_data: TokenizedDataset | None = None
        self.eval_data: TokenizedDataset | None = None

    def read_data(self) -> tuple[EpochSampler, int]:
        """The splits (`load_data`), at least one batch of training examples; a sampler over them and `planned_steps`."""
        cfg, t = self.cfg, self.cfg.trainer
        self.tokenizer = load_tokenizer(cfg.model.policy)
        self.pad_id = self.tokenizer.pad_token_id
        self.train_data, self.eval_data = self.load_data()
        if len(self.train_data) < t.train_batch_size:
            raise DataError(self.train_data.source, None, f"{len(self.train_data)} usable examples, fewer than "
                            f"trainer.train_batch_size={t.train_batch_size} (one optimizer step)")
        sampler = EpochSampler(len(self.train_data), t.train_batch_size, t.seed, cfg.data.shuffle)
        return sampler, planned_steps(len(self.train_data), cfg)

    def optimizer_steps(self) -> int:
        return self.total_steps  # one optimizer step per step

    # -- subclass hooks ---------------------------------------------------------------------------
    def load_data(self) -> tuple[TokenizedDataset, TokenizedDataset | None]:
        """(train, eval or None), tokenized with ``self.tokenizer``."""
        raise NotImplementedError

    def create_roles(self) -> dict[str, WorkerGroup]:
        """{role: group}; must include ``trainer_role``. Default: the policy trainer in the policy pool."""
        from rlhf.workers.policy import PolicyTrainer

        return {"policy": self.start_group(PolicyTrainer, self.cfg, role="policy")}

    def train_step(self, indices: list[int]) -> dict[str, float]:
        """One optimizer step on the training examples at ``indices``; the step's metrics."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Metrics on data.eval (called only when there is one)."""
        raise NotImplementedError

    # -- the lifecycle's hooks ------------------------------------------------------------------------
    @property
    def trained(self) -> dict[str, str]:
        return {self.trainer_role: self.model_dir}

    @property
    def trainer(self) -> WorkerGroup:
        return self.groups[self.trainer_role]

    def step_once(self) -> dict[str, float]:
        row = self.train_step(next(self.sampler))
        row["epoch"] = self.sampler.epoch + self.sampler.position / self.sampler.batches_per_epoch
        return row

    def eval_at_start(self) -> bool:
        return self.eval_data is not None

    def eval_due(self) -> bool:
        interval = self.cfg.trainer.eval_interval
        return self.eval_data is not None and ((interval and self.step % interval == 0) or self.step == self.total_steps)

    def summary_lines(self, history: list[dict]) -> list[str]:
        epochs = [r["epoch"] for r in history if "epoch" in r]
        return [f"{'epochs':<26} {epochs[-1]:.2f}"] if epochs else []

    def eval_batches(self) -> Iterator[list]:
        return chunks(self.eval_data, self.eval_batch_size)
