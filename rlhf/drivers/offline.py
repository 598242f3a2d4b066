"""What the offline drivers (SFT, reward modelling, DPO) share: data, placement, roles, the step loop,
eval, checkpoints and resume, metrics, the final model, the summary and shutdown.

An offline run, step by step:

1. Load and tokenize data.train and data.eval (before any actor starts, so a bad row fails
   at once with its file and row; data.max_samples limits the training set only).
2. Plan, check and create the placement groups (`cluster.prepare_placement`); start the roles:
   the trained model as `resources.policy.num_actors` data-parallel DeepSpeed ranks in the
   policy pool (`create_roles`; DPO adds its reference), and wait until all have loaded.
3. Resume from checkpoint.resume (default: the newest complete checkpoint): the trainer's
   DeepSpeed state (weights, optimizer, lr schedule) and the `EpochSampler`'s position, so the
   resumed run takes exactly the batches the uninterrupted one would have.
4. Steps: each takes the next trainer.train_batch_size examples (pairs, for DPO and RM) from the
   sampler, epoch after epoch, and is one optimizer step across the ranks (`train_step`). The
   run has num_epochs * (examples // train_batch_size) steps, or trainer.max_steps if that is fewer.
5. Eval on data.eval (`evaluate`): before the first step (logged as step 0), every
   trainer.eval_interval steps and after the last step; the eval metrics join that step's row.
6. Checkpoints every checkpoint.interval steps and at the end (`PendingCheckpoint`: atomic,
   rotating): <dir>/step_N/<model_dir> (DeepSpeed state), <model_dir>_hf (Hugging Face
   format) and driver_state.json.
7. The final model in Hugging Face format in <output_dir>/<model_dir>, a summary printed and
   written to <output_dir>/summary.txt, and every actor and placement group removed.

A role that dies or does not answer within resources.call_timeout_s raises a `WorkerError`
whose message starts with the step ("step 12: policy did not answer dpo_step within ...").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from rlhf.config import RLHFConfig, to_yaml
from rlhf.data.datasets import EpochSampler, TokenizedDataset
from rlhf.data.errors import DataError
from rlhf.drivers.checkpoint import PendingCheckpoint, read_driver_state, resolve_resume
from rlhf.drivers.cluster import Pool, actor_options, prepare_placement, release, write_placement
from rlhf.drivers.console import log_dir
from rlhf.drivers.metrics import MetricsLogger
from rlhf.models.loading import load_tokenizer
from rlhf.workers.group import WorkerError, WorkerGroup

log = logging.getLogger(__name__)

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


def start_group(cfg: RLHFConfig, pools: dict[str, Pool], actor_cls, *init_args, role: str, pool: str) -> WorkerGroup:
    """The actors of ``role``, one per bundle of the pool planned for ``pool`` (a config role name)."""
    num = getattr(cfg.resources, pool).num_actors
    return WorkerGroup(
        actor_cls,
        role=role,
        num_actors=num,
        actor_options=[actor_options(pools, pool, i) for i in range(num)],
        init_args=init_args,
        call_timeout_s=cfg.resources.call_timeout_s,
        startup_timeout_s=cfg.resources.startup_timeout_s,
        log_dir=log_dir(cfg),
    )


class OfflineDriver:
    """The loop of an offline algorithm; subclasses give the data, the roles, one step and the eval."""

    name = "offline"  # in the summary: SFT, RM, DPO
    trainer_role = "policy"  # the trained model's role name: in errors, and its checkpoint subdirectory
    model_dir = "policy"  # the final model: <output_dir>/<model_dir>
    progress_keys: tuple[str, ...] = ("loss",)  # shown on the progress bar
    summary_keys: tuple[str, ...] = ("loss",)  # shown first -> last in the summary

    def __init__(self, cfg: RLHFConfig):
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.model.policy)
        self.pad_id = self.tokenizer.pad_token_id
        self.train_data, self.eval_data = self.load_data()
        t = cfg.trainer
        if len(self.train_data) < t.train_batch_size:
            raise DataError(self.train_data.source, None, f"{len(self.train_data)} usable examples, fewer than "
                            f"trainer.train_batch_size={t.train_batch_size} (one optimizer step)")
        self.sampler = EpochSampler(len(self.train_data), t.train_batch_size, t.seed, self.cfg.data.shuffle)
        self.total_steps = planned_steps(len(self.train_data), cfg)
        self.eval_batch_size = t.train_batch_size
        self.step = 0
        self.pools: dict[str, Pool] = {}
        self.groups: dict[str, WorkerGroup] = {}
        self.last_checkpoint: Path | None = None

    # -- subclass hooks ---------------------------------------------------------------------------
    def load_data(self) -> tuple[TokenizedDataset, TokenizedDataset | None]:
        raise NotImplementedError

    def create_roles(self) -> dict[str, WorkerGroup]:
        """{role: group}; must include ``trainer_role``. Default: the policy trainer in the policy pool."""
        from rlhf.workers.policy import PolicyTrainer

        return {"policy": start_group(self.cfg, self.pools, PolicyTrainer, self.cfg, self.total_steps, role="policy", pool="policy")}

    def before_training(self) -> None:
        """After the roles are up (and resumed), before the first step."""

    def train_step(self, indices: list[int]) -> dict[str, float]:
        """One optimizer step on the training examples at ``indices``; the step's metrics."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Metrics on data.eval (called only when there is one)."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------
    @property
    def trainer(self) -> WorkerGroup:
        return self.groups[self.trainer_role]

    def eval_batches(self) -> Iterator[list]:
        return chunks(self.eval_data, self.eval_batch_size)

    def run(self) -> dict:
        cfg = self.cfg
        out = Path(cfg.logging.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
        self.pools = prepare_placement(cfg)
        metrics = None
        try:
            self.start_roles()
            self._write_placement(out)
            self._maybe_resume()
            self.before_training()
            metrics = MetricsLogger(cfg, self.total_steps, self.step)
            start = time.time()
            first_step = self.step
            if self.step == 0 and self.eval_data is not None:
                metrics.log(0, self._evaluate(), advance=False)
            while self.step < self.total_steps:
                indices = next(self.sampler)
                self.step += 1
                try:
                    row = self.train_step(indices)
                except WorkerError as err:
                    raise type(err)(f"step {self.step}: {err}") from err
                row["epoch"] = self.sampler.epoch + self.sampler.position / self.sampler.batches_per_epoch
                interval = cfg.trainer.eval_interval
                if self.eval_data is not None and ((interval and self.step % interval == 0) or self.step == self.total_steps):
                    row.update(self._evaluate())
                metrics.log(self.step, row, self.progress_keys)
                if cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0:
                    self.save_checkpoint()
            if self.step > first_step and (self.last_checkpoint is None or self.last_checkpoint.name != f"step_{self.step:06d}"):
                self.save_checkpoint()
            # all ranks: ZeRO-3 gathers the weights on every rank, rank 0 writes them
            self.trainer.run_all("save_pretrained", str(out / self.model_dir))
            seconds = time.time() - start
            summary = self.summary(metrics.history, seconds, first_step)
            print(summary)
            (out / "summary.txt").write_text(summary + "\n")
            return {
                "history": metrics.history,
                "checkpoint": str(self.last_checkpoint),
                "output_dir": str(out),
                "model": str(out / self.model_dir),
                "seconds": seconds,
            }
        finally:
            if metrics is not None:
                metrics.close()
            self._shutdown()

    def start_roles(self) -> None:
        self.groups = self.create_roles()
        self.trainer.setup_distributed()
        for group in self.groups.values():
            group.wait_ready()

    def drop_role(self, role: str) -> None:
        """End a role's actors mid-run (e.g. the DPO reference once its logprobs are cached)."""
        group = self.groups.pop(role, None)
        if group is not None:
            group.kill()

    def _evaluate(self) -> dict[str, float]:
        try:
            return self.evaluate()
        except WorkerError as err:
            raise type(err)(f"step {self.step} (eval): {err}") from err

    def _shutdown(self) -> None:
        release(list(self.groups.values()), self.pools)

    # -- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        pending = PendingCheckpoint(self.cfg.checkpoint_dir, self.step, self.cfg.checkpoint.keep)
        self.trainer.run_all("save_checkpoint", str(pending.path / self.model_dir))
        self.trainer.run_all("save_pretrained", str(pending.path / f"{self.model_dir}_hf"))
        pending.write_driver_state(
            {
                "algorithm": self.cfg.algorithm.name,
                "step": self.step,
                "sampler": self.sampler.state_dict(),
                "seed": self.cfg.trainer.seed,  # data order derives from (seed, epoch): no driver RNG to carry
            }
        )
        self.last_checkpoint = pending.commit()
        log.info("checkpoint saved: %s", self.last_checkpoint)
        return self.last_checkpoint

    def _maybe_resume(self) -> None:
        ckpt = resolve_resume(self.cfg.checkpoint.resume, self.cfg.checkpoint_dir)
        if ckpt is None:
            return
        state = read_driver_state(ckpt, self.cfg.algorithm.name)
        self.sampler.load_state_dict(state["sampler"])
        self.trainer.run_all("load_checkpoint", str(ckpt / self.model_dir))
        self.step = state["step"]
        self.last_checkpoint = ckpt
        log.info("resumed from %s at step %d", ckpt, self.step)

    # -- reporting ----------------------------------------------------------------------------------
    def _write_placement(self, out: Path) -> None:
        write_placement(list(self.groups.values()), out)

    def summary(self, history: list[dict], seconds: float, first_step: int) -> str:
        out = Path(self.cfg.logging.output_dir)
        steps = [r for r in history if r["step"] > 0]
        if not steps:
            return f"{self.name}: no steps run"
        ran = self.step - first_step
        lines = ["=" * 60, f"{self.name} finished: {self.step} steps ({steps[-1]['epoch']:.2f} epochs), "
                 f"{ran} in this run in {seconds:.1f}s"]
        for key in self.summary_keys:
            lines.append(f"{key:<26} first {steps[0][key]:.4f}  last {steps[-1][key]:.4f}")
        evals = [r for r in history if any(k.startswith("eval/") for k in r)]
        for key in sorted({k for r in evals for k in r if k.startswith("eval/")}):
            values = [r[key] for r in evals if key in r]
            lines.append(f"{key:<26} start {values[0]:.4f}  end {values[-1]:.4f}")
        times = [r["time/step"] for r in steps if "time/step" in r]
        if times:
            lines.append(f"time per step: {sum(times) / len(times):.2f}s")
        lines += [
            f"metrics:    {out / 'metrics.jsonl'}",
            f"checkpoint: {self.last_checkpoint}",
            f"model:      {out / self.model_dir}",
            "=" * 60,
        ]
        return "\n".join(lines)

