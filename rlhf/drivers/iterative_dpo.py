"""Iterative (online) DPO: sample -> score -> best vs worst pairs -> DPO update -> weight sync, once per round (step).

Xiong et al. 2024 ("Iterative Preference Learning from Human Feedback"); with two samples per prompt,
Online DPO (Guo et al. 2024). The roles and the lifecycle are the online driver's (`ppo.OnlineDriver`:
collect, generate, score shaping, weight sync, eval, resume); only the update differs. One round:

1. `collect`: rollout_batch_size prompts x samples_per_prompt responses from the current policy, group
   by group (with algorithm.ppo.dynamic_sampling, prompts whose responses all score equal are replaced
   by newly sampled ones where possible).
2. Submitted together: the reward role's scores (model.reward, or the rule model.reward_fn) and the
   policy's token logprobs at rollout.temperature (only for the engine/trainer logprob gap).
3. The scores as the online algorithms shape them (`shape_scores`: missing-EOS and overlong penalties,
   clipping) rank each prompt's responses; the best and the worst become its pair
   (`algorithms.iterative_dpo.best_worst_pairs`; a prompt whose scores are all equal has none), as
   exact sampled token ids (`data.collate.rollout_pairs`).
4. Reference logprobs of the pairs (temperature 1, as DPO): algorithm.iterative_dpo.reference_update
   `never` from the frozen reference actor (or, with LoRA and model.reference_from_base, the policy
   with its adapter off); `every_round` from the policy itself before this round's update, i.e. the
   reference is the policy at the start of the round, and no reference actor runs.
5. The update: ppo_epochs passes over the round's rollout_batch_size pair slots (one per prompt), each
   in optimizer steps of algorithm.ppo.mini_batch_size slots; the real pairs are dealt evenly over the
   steps (`deal_pairs`) and the slots without a preference are masked out of the loss (`pair_mask`),
   so each step is `PolicyTrainer.dpo_step`'s mean over its real pairs (algorithm.dpo: beta, loss_type,
   label_smoothing, nll_coef). DeepSpeed's lr schedule is sized for every step of every round
   (`registry`); a step with no real pair, or a round without any, is not taken.
6. Weight sync to the engines (a new version every round, also after a round without pairs), metrics.

Metrics, besides the online driver's rollout ones (reward/mean of every sampled response, response
length, rollout/logprob_diff_max, sync/*, time/*): TRL's DPO names (loss, rewards/chosen,
rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected, nll_loss, as
means over the round's optimizer steps), pairs/count, pairs/fraction (of the prompts),
pairs/score_margin (best - worst score, mean over the pairs), policy/optimizer_steps, time/reference.
"""

from __future__ import annotations

import time

import torch

from rlhf.algorithms.dpo import preference_logps
from rlhf.algorithms.iterative_dpo import best_worst_pairs, deal_pairs
from rlhf.config import RLHFConfig
from rlhf.data.batch_ops import index_batch
from rlhf.data.collate import pairs_as_rows, rollout_pairs
from rlhf.drivers.ppo import MODEL_KEYS, OnlineDriver, mean_stats, timed
from rlhf.drivers.reference_scoring import reference_scorer
from rlhf.workers.group import WorkerGroup


class IterativeDPODriver(OnlineDriver):
    progress_keys = ("reward/mean", "pairs/count", "rewards/accuracies", "rollout/logprob_diff_max")
    summary_keys = ("reward/mean", "pairs/count", "loss", "rewards/accuracies", "rewards/margins")

    def __init__(self, cfg: RLHFConfig):
        super().__init__(cfg)
        self.name = "Iterative DPO"
        self.dpo = cfg.algorithm.dpo

    def step_once(self) -> dict[str, float]:
        ppo = self.ppo
        t_step = time.time()
        (batch, prompts_text, scores, sampling), t_generate = timed(self.sample)
        (old_logprobs, scores), t_score = timed(self.score_rollouts, batch, prompts_text, scores)

        pairs = best_worst_pairs(self.shape_scores(batch, scores), ppo.samples_per_prompt)
        num_pairs = int(pairs.has_preference.sum())
        train_batch = rollout_pairs(batch, pairs.chosen, pairs.rejected, self.tokenizer.pad_token_id)
        train_batch["pair_mask"] = pairs.has_preference.float()

        train_stats, t_reference, t_train = {"policy/optimizer_steps": 0}, 0.0, 0.0
        if num_pairs:
            (train_batch["ref_chosen_logps"], train_batch["ref_rejected_logps"]), t_reference = timed(
                self.reference_logprobs, train_batch)
            train_stats, t_train = timed(self.update, train_batch)
        sync_bytes, t_sync = timed(self.sync_weights)

        rollout_row = self.rollout_metrics(batch, old_logprobs, scores, sampling)
        step_time = time.time() - t_step
        return {
            **rollout_row,
            "pairs/count": num_pairs,
            "pairs/fraction": num_pairs / len(pairs.chosen),
            "pairs/score_margin": pairs.score_margin[pairs.has_preference].mean().item() if num_pairs else 0.0,
            **train_stats,
            "sync/seconds": t_sync,
            "sync/version": self.version,
            "sync/megabytes": sync_bytes / 2**20,
            "time/generate": t_generate,
            "time/score": t_score,
            "time/reference": t_reference,
            "time/train": t_train,
            "time/step": step_time,
            "throughput/tokens_per_s": batch["response_mask"].sum().item() / step_time,
        }

    def score_rollouts(self, batch: dict, prompts_text: list[str], scores: torch.Tensor | None):
        """(the policy's token logprobs at rollout.temperature, the scores), the two passes submitted together;
        ``scores`` already given (dynamic sampling scored the rounds) are kept."""
        model_batch = {k: batch[k] for k in MODEL_KEYS}
        pending_old = self.groups["policy"].scatter_async("logprobs", model_batch)
        pending_scores = None
        if scores is None:
            pending_scores = self.groups["reward"].scatter_async("scores", {**model_batch, "prompts": prompts_text})
        old_logprobs = torch.cat(pending_old.wait())
        return old_logprobs, scores if pending_scores is None else torch.cat(pending_scores.wait())

    def reference_logprobs(self, pair_batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi_ref(chosen), log pi_ref(rejected)) [G] of every pair slot, as the loss type uses them
        (`preference_logps`), from the source reference_update names (module doc, step 4)."""
        # every_round starts no reference actor and refuses reference_from_base: the policy scores them itself
        group, method = reference_scorer(self.groups, self.cfg)
        rows = pairs_as_rows(pair_batch)  # the G chosen rows, then the G rejected rows
        logps = preference_logps(WorkerGroup.gather_cat(group.scatter(method, rows)), rows["loss_mask"], self.dpo.loss_type)
        chosen, rejected = logps.view(2, -1)
        return chosen.contiguous(), rejected.contiguous()

    def update(self, train_batch: dict) -> dict[str, float]:
        """ppo_epochs passes of DPO steps over the round's pair slots, mini_batch_size slots a step (module doc, step 5)."""
        ppo = self.ppo
        generator = torch.Generator().manual_seed(self.cfg.trainer.seed * 7919 + self.step)
        stats: list[dict] = []
        steps = 0
        for _ in range(ppo.ppo_epochs):
            for rows in deal_pairs(train_batch["pair_mask"].bool(), ppo.rollout_batch_size // ppo.mini_batch_size, generator):
                minibatch = index_batch(train_batch, rows)
                if not minibatch["pair_mask"].any():
                    continue  # no real pair: an optimizer step would only move the weights by Adam's momentum
                stats.extend(self.groups["policy"].scatter("dpo_step", minibatch))
                steps += 1
        return {**mean_stats(stats), "policy/optimizer_steps": steps}
