"""The PPO loop: generate -> score (policy, reference, reward, critic) -> targets -> PPO epochs -> weight sync.

Orchestration only: every tensor formula is a call into `rlhf.algorithms`, every model pass is a
method of a role's actors. Independent passes (the four scoring passes; the policy and critic
updates) are submitted together so roles on different resources run concurrently.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlhf.algorithms.ppo import AdaptiveKLController, FixedKLController, explained_variance
from rlhf.algorithms.ppo_targets import RunningMoments, adjust_scores, compute_targets, logprob_gap
from rlhf.config import RLHFConfig, to_yaml
from rlhf.data.batch_ops import concat_rollouts, index_batch
from rlhf.data.datasets import EpochSampler, load_prompt_dataset
from rlhf.drivers.checkpoint import PendingCheckpoint, read_driver_state, resolve_resume, step_dirname
from rlhf.drivers.cluster import Pool, actor_options, prepare_placement, release, write_placement
from rlhf.drivers.console import log_dir
from rlhf.drivers.engine_restart import EngineRestarter
from rlhf.drivers.metrics import MetricsLogger
from rlhf.drivers.preemption import Preempted, PreemptionGuard
from rlhf.models.loading import load_tokenizer
from rlhf.report import update_report
from rlhf.workers.critic import CriticTrainer
from rlhf.workers.faults import FaultInjector
from rlhf.workers.group import WorkerError, WorkerGroup
from rlhf.workers.policy import PolicyTrainer
from rlhf.workers.reference import ReferenceWorker
from rlhf.workers.reward import RewardWorker
from rlhf.workers.rollout import RolloutEngine

log = logging.getLogger(__name__)

PROGRESS_KEYS = ("reward/mean", "kl/mean", "rollout/logprob_diff_max")


@dataclass
class PPORoles:
    policy: WorkerGroup
    reference: WorkerGroup | None  # None: the policy's base model with the LoRA adapter disabled
    reward: WorkerGroup
    critic: WorkerGroup
    rollout: WorkerGroup

    def all(self) -> list[WorkerGroup]:
        return [g for g in (self.policy, self.reference, self.reward, self.critic, self.rollout) if g is not None]


def _group(cfg: RLHFConfig, pools: dict[str, Pool], faults: FaultInjector, role: str, actor_cls, num: int, *args) -> WorkerGroup:
    return WorkerGroup(
        actor_cls,
        role=role,
        num_actors=num,
        actor_options=[actor_options(pools, role, i) for i in range(num)],
        init_args=args,
        call_timeout_s=cfg.resources.call_timeout_s,
        startup_timeout_s=cfg.resources.startup_timeout_s,
        faults=faults,
        log_dir=log_dir(cfg),
    )


def start_roles(cfg: RLHFConfig, pools: dict[str, Pool], faults: FaultInjector) -> PPORoles:
    """Create every role's actors, wait until all have loaded, and form the trainers' process groups."""
    res = cfg.resources
    critic_path = cfg.model.critic or cfg.model.reward
    roles = PPORoles(
        policy=_group(cfg, pools, faults, "policy", PolicyTrainer, res.policy.num_actors, cfg),
        reference=None if cfg.model.reference_from_base else _group(cfg, pools, faults, "reference", ReferenceWorker, res.reference.num_actors, cfg),
        reward=_group(cfg, pools, faults, "reward", RewardWorker, res.reward.num_actors, cfg),
        critic=_group(cfg, pools, faults, "critic", CriticTrainer, res.critic.num_actors, cfg, critic_path),
        rollout=_group(cfg, pools, faults, "rollout", RolloutEngine, cfg.rollout.num_engines, cfg, cfg.model.policy),
    )
    roles.policy.setup_distributed()
    roles.critic.setup_distributed()
    for group in roles.all():
        group.wait_ready()
    return roles


class PPODriver:
    def __init__(self, cfg: RLHFConfig):
        self.cfg = cfg
        self.ppo = cfg.algorithm.ppo
        self.tokenizer = load_tokenizer(cfg.model.policy)
        self.prompts = load_prompt_dataset(cfg.data.train, self.tokenizer, cfg.data)
        self.eval_prompts = load_prompt_dataset(cfg.data.eval, self.tokenizer, cfg.data) if cfg.data.eval else None
        self.sampler = EpochSampler(len(self.prompts), self.ppo.rollout_batch_size, cfg.trainer.seed, cfg.data.shuffle)
        if self.ppo.kl_controller == "adaptive":
            self.kl_ctl = AdaptiveKLController(self.ppo.kl_coef, self.ppo.kl_target, self.ppo.kl_horizon)
        else:
            self.kl_ctl = FixedKLController(self.ppo.kl_coef)
        self.score_moments = RunningMoments() if self.ppo.normalize_reward else None
        self.step = 0
        self.version = 0
        self.pools: dict[str, Pool] = {}
        self.roles: PPORoles | None = None
        self.last_checkpoint: Path | None = None
        self.faults = FaultInjector(cfg.debug.fail_at)
        self.engine_restarts: EngineRestarter | None = None
        self.preemption = PreemptionGuard()

    # -- lifecycle ---------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        out = Path(cfg.logging.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
        self.pools = prepare_placement(cfg)
        metrics = None
        self.preemption.install()
        try:
            self.roles = start_roles(cfg, self.pools, self.faults)
            self.engine_restarts = EngineRestarter(self.roles.rollout, cfg.rollout.max_engine_restarts)
            self._write_placement(out)
            self._maybe_resume()
            metrics = MetricsLogger(cfg, self.ppo.num_steps, self.step)
            start = time.time()
            first_step = self.step
            while self.step < self.ppo.num_steps:
                self.step += 1
                self.faults.step = self.step
                try:
                    row = self.train_step()
                    metrics.log(self.step, row, PROGRESS_KEYS)
                    if cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0:
                        self.save_checkpoint()
                except WorkerError as err:
                    raise type(err)(f"step {self.step}: {err}") from err
                self._stop_if_preempted()
            if self.step > first_step and (self.last_checkpoint is None or not self.last_checkpoint.name.endswith(f"{self.step:06d}")):
                self.save_checkpoint()
            # all ranks: ZeRO-3 gathers the weights on every rank, rank 0 writes them
            self.roles.policy.run_all("save_pretrained", str(out / "policy"))
            self.roles.critic.run_all("save_pretrained", str(out / "critic"))
            summary = self._summary(metrics.history, time.time() - start)
            print(summary)
            (out / "summary.txt").write_text(summary + "\n")
            return {"history": metrics.history, "checkpoint": str(self.last_checkpoint), "output_dir": str(out)}
        finally:
            self.preemption.uninstall()
            if metrics is not None:
                metrics.close()
            self._shutdown()

    def _shutdown(self) -> None:
        release(self.roles.all() if self.roles is not None else [], self.pools)

    # -- one PPO step --------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        ppo, cfg = self.ppo, self.cfg
        self.faults.driver_point("train_step")
        t_step = time.time()
        indices = next(self.sampler)
        examples = [self.prompts[i] for i in indices]

        t0 = time.time()
        batch = self.generate([e.prompt_ids for e in examples], self.step)
        prompts_text = [examples[i].raw_prompt for i in batch["prompt_index"].tolist()]
        t_generate = time.time() - t0

        t0 = time.time()
        old_logprobs, ref_logprobs, scores, values = self.score(batch, prompts_text)
        t_score = time.time() - t0

        raw_scores = scores
        scores = adjust_scores(scores, batch["finished_with_eos"], ppo.missing_eos_penalty, ppo.reward_clip, self.score_moments)
        mask = batch["response_mask"]
        targets = compute_targets(
            old_logprobs, ref_logprobs, values, scores, mask,
            kl_coef=self.kl_ctl.value, kl_estimator=ppo.kl_estimator,
            gamma=ppo.gamma, lam=ppo.lam, whiten_advantages=ppo.whiten_advantages,
        )
        train_batch = {
            "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "response_mask": mask,
            "old_logprobs": old_logprobs, "old_values": values,
            "advantages": targets["advantages"], "returns": targets["returns"],
        }

        t0 = time.time()
        train_stats = self.update(train_batch)
        t_train = time.time() - t0

        kl_mean = targets["sequence_kl"].mean().item()
        kl_coef_used = self.kl_ctl.value
        self.kl_ctl.update(kl_mean, len(indices) * ppo.samples_per_prompt)

        t0 = time.time()
        sync_bytes = self.sync_weights()
        t_sync = time.time() - t0

        gap_max, gap_mean = logprob_gap(batch["rollout_logprobs"], old_logprobs, mask)
        if cfg.rollout.logprob_check_tolerance and gap_max > cfg.rollout.logprob_check_tolerance:
            raise WorkerError(
                f"rollout logprobs drift from the trainer's by {gap_max:.3g} > rollout.logprob_check_tolerance"
            )
        response_tokens = mask.sum().item()
        step_time = time.time() - t_step
        row = {
            "reward/mean": raw_scores.mean().item(),
            "reward/std": raw_scores.std().item() if len(raw_scores) > 1 else 0.0,
            "kl/mean": kl_mean,
            "kl/coef": kl_coef_used,
            **train_stats,
            "value/explained_var": explained_variance(values, targets["returns"], mask).item(),
            "response/length_mean": mask.sum(-1).mean().item(),
            "response/eos_fraction": batch["finished_with_eos"].float().mean().item(),
            "rollout/logprob_diff_max": gap_max,
            "rollout/logprob_diff_mean": gap_mean,
            "sync/seconds": t_sync,
            "sync/version": self.version,
            "sync/megabytes": sync_bytes / 2**20,
            "rollout/engine_restarts": self.engine_restarts.restarts,
            "time/generate": t_generate,
            "time/score": t_score,
            "time/train": t_train,
            "time/step": step_time,
            "throughput/tokens_per_s": response_tokens / step_time,
        }
        if ppo.eval_interval and self.eval_prompts is not None and self.step % ppo.eval_interval == 0:
            row.update(self.evaluate())
        return row

    def generate(self, prompt_ids: list[list[int]], step: int, greedy: bool = False) -> dict:
        """Split prompts across engines; every engine must hold the current weights version."""
        engines = self.roles.rollout
        shards = [list(range(len(prompt_ids)))[i :: engines.num_actors] for i in range(engines.num_actors)]
        seed = self.cfg.trainer.seed * 1_000_003 + step  # same samples for the same step after a resume
        outputs = self.engine_restarts.call(
            lambda: engines.run_each(
                "generate",
                [([prompt_ids[i] for i in shard],) for shard in shards],
                expected_version=self.version,
                samples_per_prompt=1 if greedy else self.ppo.samples_per_prompt,
                greedy=greedy,
                seed=seed,
            ),
            resync=self._load_current_weights,
        )
        for shard, out in zip(shards, outputs):
            out["prompt_index"] = torch.as_tensor(shard, dtype=torch.long)[out["prompt_index"]]
        return concat_rollouts([o for o in outputs if len(o["prompt_index"])], self.tokenizer.pad_token_id)

    def score(self, batch: dict, prompts_text: list[str]):
        """The four scoring passes, submitted together: old logprobs, reference logprobs, scores, values."""
        roles = self.roles
        model_batch = {k: batch[k] for k in ("input_ids", "attention_mask", "response_mask")}
        pending = [roles.policy.scatter_async("logprobs", model_batch)]
        if roles.reference is not None:
            pending.append(roles.reference.scatter_async("logprobs", model_batch))
        else:
            pending.append(roles.policy.scatter_async("reference_logprobs", model_batch))
        pending.append(roles.reward.scatter_async("scores", {**model_batch, "prompts": prompts_text}))
        pending.append(roles.critic.scatter_async("values", model_batch))
        old_logprobs, ref_logprobs, scores, values = (torch.cat(p.wait(), dim=0) for p in pending)
        return old_logprobs, ref_logprobs, scores, values

    def update(self, train_batch: dict) -> dict[str, float]:
        """ppo_epochs passes of minibatch updates of the policy and the critic, side by side."""
        ppo = self.ppo
        n = len(train_batch["input_ids"])
        generator = torch.Generator().manual_seed(self.cfg.trainer.seed * 7919 + self.step)
        stats: list[dict] = []
        for _ in range(ppo.ppo_epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, ppo.mini_batch_size):
                minibatch = index_batch(train_batch, order[start : start + ppo.mini_batch_size])
                policy = self.roles.policy.scatter_async("ppo_step", minibatch)
                critic = self.roles.critic.scatter_async("value_step", minibatch)
                stats.extend(policy.wait() + critic.wait())
        return _mean_stats(stats)

    def sync_weights(self) -> int:
        """Publish the policy's weights as the next version and load them into every engine."""
        version = self.version + 1
        handles = self.roles.policy.run_all("publish_weights", version)
        handle = next(h for h in handles if h is not None)
        loaded = self.engine_restarts.call(lambda: self.roles.rollout.run_all("load_weights", handle))
        if any(v != version for v in loaded):
            raise WorkerError(f"rollout engines report versions {loaded} after syncing version {version}")
        self.version = version
        return handle.total_bytes

    def _load_current_weights(self) -> None:
        """Every engine gets the policy's weights as version self.version (after a resume or an engine restart)."""
        handles = self.roles.policy.run_all("publish_weights", self.version)
        self.roles.rollout.run_all("load_weights", next(h for h in handles if h is not None))

    def evaluate(self) -> dict[str, float]:
        """Greedy responses to the eval prompts, scored by the reward role."""
        examples = list(self.eval_prompts)
        batch = self.generate([e.prompt_ids for e in examples], 0, greedy=True)
        prompts_text = [examples[i].raw_prompt for i in batch["prompt_index"].tolist()]
        model_batch = {k: batch[k] for k in ("input_ids", "attention_mask", "response_mask")}
        scores = torch.cat(self.roles.reward.scatter_async("scores", {**model_batch, "prompts": prompts_text}).wait())
        return {"eval/reward/mean": scores.mean().item()}

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        pending = PendingCheckpoint(self.cfg.checkpoint_dir, self.step, self.cfg.checkpoint.keep)
        self.roles.policy.run_all("save_checkpoint", str(pending.path / "policy"))
        self.roles.critic.run_all("save_checkpoint", str(pending.path / "critic"))
        self.roles.policy.run_all("save_pretrained", str(pending.path / "policy_hf"))
        self.roles.critic.run_all("save_pretrained", str(pending.path / "critic_hf"))
        pending.write_driver_state(
            {
                "algorithm": "ppo",
                "step": self.step,
                "kl_controller": self.kl_ctl.state_dict(),
                "sampler": self.sampler.state_dict(),
                "score_moments": self.score_moments.state_dict() if self.score_moments else None,
                # Sampling seeds and minibatch orders derive from (trainer.seed, step): no driver RNG to carry.
                "seed": self.cfg.trainer.seed,
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
        if self.last_checkpoint is None or self.last_checkpoint.name != step_dirname(self.step):
            self.save_checkpoint()
        raise Preempted(f"preempted (SIGTERM) after step {self.step}; checkpoint {self.last_checkpoint}; "
                        "run again with checkpoint.resume=auto to continue")

    def _maybe_resume(self) -> None:
        ckpt = resolve_resume(self.cfg.checkpoint.resume, self.cfg.checkpoint_dir)
        if ckpt is None:
            return
        state = read_driver_state(ckpt, "ppo")
        self.roles.policy.run_all("load_checkpoint", str(ckpt / "policy"))
        self.roles.critic.run_all("load_checkpoint", str(ckpt / "critic"))
        self.step = state["step"]
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.sampler.load_state_dict(state["sampler"])
        if self.score_moments is not None and state["score_moments"]:
            self.score_moments.load_state_dict(state["score_moments"])
        self.version = self.step  # one sync per step so far; engines get that version now
        self._load_current_weights()
        self.last_checkpoint = ckpt
        log.info("resumed from %s at step %d (kl_coef %.4g)", ckpt, self.step, self.kl_ctl.value)

    # -- reporting -----------------------------------------------------------------------------
    def _write_placement(self, out: Path) -> None:
        write_placement(self.roles.all(), out)

    def _summary(self, history: list[dict], seconds: float) -> str:
        if not history:
            return "PPO: no steps run"
        first, last = history[0], history[-1]
        phases = ("time/generate", "time/score", "time/train", "sync/seconds")
        mean_phase = {k: sum(r.get(k, 0.0) for r in history) / len(history) for k in phases}
        lines = [
            "=" * 60,
            f"PPO finished: {last['step']} steps in {seconds:.1f}s",
            f"reward/mean   first {first['reward/mean']:.4f}  last {last['reward/mean']:.4f}",
            f"kl/mean       last {last['kl/mean']:.4f}  (kl/coef {last['kl/coef']:.4g})",
            f"logprob gap   max over run {max(r['rollout/logprob_diff_max'] for r in history):.2e}",
            "time per step: " + ", ".join(f"{k} {v:.2f}s" for k, v in mean_phase.items()),
            f"metrics:    {Path(self.cfg.logging.output_dir) / 'metrics.jsonl'}",
            f"checkpoint: {self.last_checkpoint}",
            f"policy:     {Path(self.cfg.logging.output_dir) / 'policy'}",
            "=" * 60,
        ]
        return "\n".join(lines)


def _mean_stats(stats: list[dict]) -> dict[str, float]:
    keys = {k for s in stats for k in s}
    return {k: float(np.mean([s[k] for s in stats if k in s])) for k in sorted(keys)}


def run_ppo(cfg: RLHFConfig) -> dict:
    return PPODriver(cfg).run()
