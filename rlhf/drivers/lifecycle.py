"""The one driver lifecycle every algorithm runs in: start roles, resume, loop, checkpoint, metrics, summary, shutdown.

A run, step by step (`Driver.run`):

1. Write <output_dir>/config.yaml; plan, check and create the placement groups for the roles the
   algorithm's registry entry names (`cluster.prepare_placement`).
2. Start the roles' actors (`create_roles`): their constructors load models and import their
   libraries, which takes seconds and needs no data. Meanwhile the driver reads and tokenizes its
   data (`read_data`: the sampler and the run's steps); a bad file or row ends the run there,
   its actors removed. Then the trained roles (`trained`: role -> model directory name) form their
   process groups and build their DeepSpeed engines with what the data decided (`optimizer_steps`,
   for the lr schedule), every actor is awaited, and placement.json is written.
3. Resume from checkpoint.resume (default: the newest complete checkpoint): every trained role's
   DeepSpeed state, the data sampler's position, the step, and the algorithm's own driver state
   (`load_extra_state`), then `after_resume` (e.g. push the restored weights to the rollout engines).
4. `before_training`; an eval before the first step when `eval_at_start`.
5. Steps until `total_steps` (debug.fail_at's driver points: the start of a step, after a checkpoint):
   `step_once` (the algorithm's step) returns the step's metrics; eval
   rows join when `eval_due`; one metrics row per step (`MetricsLogger`); a checkpoint every
   checkpoint.interval steps and after the last one.
6. Every trained role's final weights in Hugging Face format in <output_dir>/<model dir>, a summary
   printed and written to <output_dir>/summary.txt, and every actor and placement group removed
   (also when a step fails).

Checkpoints (`PendingCheckpoint`: atomic, rotating): <dir>/step_N/<model dir> (DeepSpeed state) and
<model dir>_hf (Hugging Face format) per trained role, and driver_state.json (algorithm, step,
sampler, seed, plus `extra_state`). A role that dies or does not answer raises a `WorkerError`
whose message starts with the step ("step 12: policy did not answer ...").
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from rlhf.config import RLHFConfig, to_yaml
from rlhf.data.datasets import EpochSampler
from rlhf.drivers.checkpoint import PendingCheckpoint, read_driver_state, resolve_resume, step_dirname
from rlhf.drivers.cluster import Pool, actor_options, prepare_placement, release, write_placement
from rlhf.drivers.console import log_dir
from rlhf.drivers.metrics import MetricsLogger
from rlhf.drivers.preemption import Preempted, PreemptionGuard
from rlhf.drivers.startup import StartupClock
from rlhf.report import update_report
from rlhf.workers.faults import FaultInjector
from rlhf.workers.group import WorkerError, WorkerGroup

log = logging.getLogger(__name__)


class Driver:
    """Runs one algorithm; subclasses supply the roles, the step and their extra driver state."""

    name = "run"  # in the summary: PPO, GRPO, SFT, ...
    progress_keys: tuple[str, ...] = ()  # shown on the progress bar
    summary_keys: tuple[str, ...] = ()  # shown first -> last in the summary

    def __init__(self, cfg: RLHFConfig):
        self.cfg = cfg
        self.sampler: EpochSampler | None = None  # `read_data`'s, once the run has read its data
        self.total_steps = 0  # the run's steps, `read_data`'s
        self.step = 0
        self.pools: dict[str, Pool] = {}
        self.groups: dict[str, WorkerGroup] = {}
        self.startup_line = ""  # where the start-up time went (`drivers.startup`), once the first step is done
        self.last_checkpoint: Path | None = None
        self.faults = FaultInjector(cfg.debug.fail_at)
        self.preemption = PreemptionGuard()

    # -- what an algorithm supplies ----------------------------------------------------------------
    def read_data(self) -> tuple[EpochSampler, int]:
        """Read and tokenize the run's data (`DataError` for a bad file or row): (its sampler, the run's steps).
        Runs while the roles' actors start, so neither may depend on the other."""
        raise NotImplementedError

    def create_roles(self) -> dict[str, WorkerGroup]:
        """{role: group} of every actor the algorithm uses, each started with `start_group`; called before
        `read_data`: what the actors need of the data they get later (`optimizer_steps`)."""
        raise NotImplementedError

    def optimizer_steps(self) -> int | None:
        """Optimizer steps of each trained role in the whole run (its lr schedule), once `read_data` ran.
        Default None: each trainer counts them from the config (`TrainerBase._default_total_steps`)."""
        return None

    @property
    def trained(self) -> dict[str, str]:
        """Trained role -> its model directory (in checkpoints and under output_dir)."""
        raise NotImplementedError

    def step_once(self) -> dict[str, float]:
        """One training step (``self.step`` is already the new step's number); its metrics."""
        raise NotImplementedError

    def extra_state(self) -> dict:
        """Driver state beyond step and sampler, saved with every checkpoint (JSON)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what `extra_state` saved (``state`` is the whole driver state)."""

    def before_resume(self) -> None:
        """After the roles are up, before a checkpoint (if any) replaces their initial state."""

    def after_resume(self) -> None:
        """After the roles' state is restored from a checkpoint."""

    def before_training(self) -> None:
        """After the roles are up (and resumed), before the first step."""

    def eval_at_start(self) -> bool:
        return False

    def eval_due(self) -> bool:
        """Whether the step just taken gets eval metrics."""
        return False

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def summary_lines(self, history: list[dict]) -> list[str]:
        """Algorithm-specific summary lines, after the first -> last lines of ``summary_keys``."""
        return []

    # -- the lifecycle -------------------------------------------------------------------------------
    def run(self, startup: StartupClock | None = None) -> dict:
        """The whole run; ``startup`` times its start-up phases (a new clock from now when None)."""
        cfg = self.cfg
        startup = startup or StartupClock()
        out = Path(cfg.logging.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
        self.pools = prepare_placement(cfg)
        startup.mark("placement")
        metrics = None
        self.preemption.install()
        try:
            self.groups = self.create_roles()
            self.sampler, self.total_steps = self.read_data()
            startup.mark("data while roles start")
            self.start_roles()
            write_placement(list(self.groups.values()), out)
            startup.mark("roles")
            self.before_resume()
            self._maybe_resume()
            self.before_training()
            metrics = MetricsLogger(cfg, self.total_steps, self.step)
            startup.mark("prepare")
            start = time.time()
            first_step = self.step
            if self.step == 0 and self.eval_at_start():
                metrics.log(0, self._evaluate(), advance=False)
                startup.mark("eval at start")
            startup_s = startup.elapsed()
            while self.step < self.total_steps:
                self.step += 1
                self.faults.step = self.step
                self.faults.driver_point("train_step")
                try:
                    row = self.step_once()
                    if self.step == first_step + 1:
                        row["time/startup"] = startup_s
                        startup.mark("first step")
                        row["time/to_first_step"] = startup.elapsed()
                        self.startup_line = startup.summary_line()
                    if self.eval_due():
                        row.update(self._evaluate())
                    metrics.log(self.step, row, self.progress_keys)
                    if cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0:
                        self.save_checkpoint()
                except WorkerError as err:
                    raise type(err)(f"step {self.step}: {err}") from err
                self._stop_if_preempted()
            if self.step > first_step and not self._checkpoint_is_current():
                self.save_checkpoint()
            for role, model_dir in self.trained.items():
                # all ranks: ZeRO-3 gathers the weights on every rank, rank 0 writes them
                self.groups[role].run_all("save_pretrained", str(out / model_dir))
            seconds = time.time() - start
            summary = self.summary(metrics.history, seconds, first_step)
            print(summary)
            (out / "summary.txt").write_text(summary + "\n")
            return {
                "history": metrics.history,
                "checkpoint": str(self.last_checkpoint),
                "output_dir": str(out),
                "model": str(out / next(iter(self.trained.values()))),
                "seconds": seconds,
            }
        finally:
            self.preemption.uninstall()
            if metrics is not None:
                metrics.close()
            release(list(self.groups.values()), self.pools)

    def start_roles(self) -> None:
        """The started actors' set-up, once the data is read: the trained roles' process groups and engines."""
        # The trained roles build their DeepSpeed engines side by side (the policy's and the critic's)
        steps = self.optimizer_steps()
        pending = [self.groups[role].setup_distributed_async(total_steps=steps) for role in self.trained]
        for call in pending:
            call.wait()
        for group in self.groups.values():
            group.wait_ready()

    def drop_role(self, role: str) -> None:
        """End a role's actors mid-run (e.g. the DPO reference once its logprobs are cached), unless their
        processes also host a role still in use (`WorkerGroup.view`)."""
        group = self.groups.pop(role, None)
        if group is not None and not any(other.actors is group.actors for other in self.groups.values()):
            group.kill()

    def start_group(self, actor_cls, *init_args, role: str, pool: str | None = None, num_actors: int | None = None,
                    index_kwarg: str | None = None, hosts: list[str] | None = None) -> WorkerGroup:
        """The actors of ``role``, one per bundle of the pool planned for ``pool`` (a config role name; default ``role``);
        ``index_kwarg`` names a constructor keyword that gets each actor's index in the group. ``hosts``: the config
        roles each process hosts (default [pool]), whose resources it gets."""
        cfg = self.cfg
        pool = pool or role
        num = num_actors if num_actors is not None else getattr(cfg.resources, pool).num_actors
        return WorkerGroup(
            actor_cls,
            role=role,
            num_actors=num,
            actor_options=[actor_options(self.pools, hosts or [pool], i) for i in range(num)],
            init_args=init_args,
            call_timeout_s=cfg.resources.call_timeout_s,
            startup_timeout_s=cfg.resources.startup_timeout_s,
            faults=self.faults,
            index_kwarg=index_kwarg,
            log_dir=log_dir(cfg),
        )

    def _evaluate(self) -> dict[str, float]:
        try:
            return self.evaluate()
        except WorkerError as err:
            raise type(err)(f"step {self.step} (eval): {err}") from err

    # -- checkpoints ------------------------------------------------------------------------------------
    def _checkpoint_is_current(self) -> bool:
        return self.last_checkpoint is not None and self.last_checkpoint.name == step_dirname(self.step)

    def save_checkpoint(self) -> Path:
        pending = PendingCheckpoint(self.cfg.checkpoint_dir, self.step, self.cfg.checkpoint.keep)
        for role, model_dir in self.trained.items():
            self.groups[role].run_all("save_checkpoint", str(pending.path / model_dir))
            self.groups[role].run_all("save_pretrained", str(pending.path / f"{model_dir}_hf"))
        pending.write_driver_state(
            {
                "algorithm": self.cfg.algorithm.name,
                "step": self.step,
                "sampler": self.sampler.state_dict(),
                # data order, sampling seeds and minibatch orders derive from (seed, step): no driver RNG to carry
                "seed": self.cfg.trainer.seed,
                **self.extra_state(),
            }
        )
        self.last_checkpoint = pending.commit()
        log.info("checkpoint saved: %s", self.last_checkpoint)
        update_report(self.cfg.logging.output_dir)
        self.faults.driver_point("save_checkpoint")
        return self.last_checkpoint

    def _stop_if_preempted(self) -> None:
        """After SIGTERM: checkpoint the step just finished (unless it has one) and stop."""
        if not self.preemption.requested:
            return
        if not self._checkpoint_is_current():
            self.save_checkpoint()
        raise Preempted(f"preempted (SIGTERM) after step {self.step}; checkpoint {self.last_checkpoint}; "
                        "run again with checkpoint.resume=auto to continue")

    def _maybe_resume(self) -> None:
        ckpt = resolve_resume(self.cfg.checkpoint.resume, self.cfg.checkpoint_dir)
        if ckpt is None:
            return
        state = read_driver_state(ckpt, self.cfg.algorithm.name)
        for role, model_dir in self.trained.items():
            self.groups[role].run_all("load_checkpoint", str(ckpt / model_dir))
        self.sampler.load_state_dict(state["sampler"])
        self.step = state["step"]
        self.load_extra_state(state)
        self.last_checkpoint = ckpt
        self.after_resume()
        log.info("resumed from %s at step %d", ckpt, self.step)

    # -- reporting -------------------------------------------------------------------------------------
    def summary(self, history: list[dict], seconds: float, first_step: int) -> str:
        out = Path(self.cfg.logging.output_dir)
        steps = [r for r in history if r["step"] > 0]
        if not steps:
            return f"{self.name}: no steps run"
        lines = ["=" * 60, f"{self.name} finished: {self.step} steps, {self.step - first_step} in this run in {seconds:.1f}s"]
        for key in self.summary_keys:
            if key in steps[0] and key in steps[-1]:
                lines.append(f"{key:<26} first {steps[0][key]:.4f}  last {steps[-1][key]:.4f}")
        lines += self.summary_lines(history)
        evals = [r for r in history if any(k.startswith("eval/") for k in r)]
        for key in sorted({k for r in evals for k in r if k.startswith("eval/")}):
            values = [r[key] for r in evals if key in r]
            lines.append(f"{key:<26} start {values[0]:.4f}  end {values[-1]:.4f}")
        times = [r["time/step"] for r in steps if "time/step" in r]
        if times:
            lines.append(f"time per step: {sum(times) / len(times):.2f}s")
        if self.startup_line:
            lines.append(self.startup_line)
        lines += [f"metrics:    {out / 'metrics.jsonl'}", f"checkpoint: {self.last_checkpoint}"]
        lines += [f"{role + ':':<11} {out / model_dir}" for role, model_dir in self.trained.items()]
        return "\n".join(lines + ["=" * 60])
