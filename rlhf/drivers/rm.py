"""Reward-model training on Ray: Bradley-Terry on preference pairs.

The model starts from model.policy (typically the SFT policy: its backbone is reused under a new
1-label score head) and trains as `RewardTrainer` ranks in the policy pool. The loop is
`offline.OfflineDriver`'s; a step is one `RewardTrainer.rm_step` on train_batch_size pairs.
Metrics per step: loss, accuracy (chosen scored above rejected), rewards/{chosen,rejected,margins},
time/step, throughput/pairs_per_s, reward/grad_norm, reward/lr; on data.eval: eval/loss,
eval/accuracy. The final model, <output_dir>/reward, is a sequence-classification model that
a PPO run takes as model.reward.
"""

from __future__ import annotations

import time

import torch

from rlhf.algorithms.reward import pairwise_accuracy, pairwise_loss
from rlhf.data.collate import collate_preference
from rlhf.data.datasets import load_preference_dataset
from rlhf.drivers.offline import OfflineDriver, load_splits
from rlhf.workers.group import WorkerGroup
from rlhf.workers.reward_trainer import RewardTrainer


class RMDriver(OfflineDriver):
    name = "RM"
    trainer_role = "reward"
    model_dir = "reward"
    progress_keys = ("loss", "accuracy", "eval/accuracy")
    summary_keys = ("loss", "accuracy")

    def load_data(self):
        return load_splits(self.cfg, self.tokenizer, load_preference_dataset)

    def create_roles(self) -> dict[str, WorkerGroup]:
        # The trained model is the plan's "policy" (cluster.active_roles): its pool and resources.
        group = self.start_group(RewardTrainer, self.cfg, None, self.total_steps, role="reward", pool="policy")
        return {"reward": group}

    def train_step(self, indices: list[int]) -> dict[str, float]:
        start = time.time()
        batch = collate_preference([self.train_data[i] for i in indices], self.pad_id)
        stats = self.trainer.scatter("rm_step", batch)[0]
        seconds = time.time() - start
        return {**stats, "time/step": seconds, "throughput/pairs_per_s": len(indices) / seconds}

    def evaluate(self) -> dict[str, float]:
        scores = torch.cat([
            WorkerGroup.gather_cat(self.trainer.scatter("pair_scores", collate_preference(examples, self.pad_id)))
            for examples in self.eval_batches()
        ])
        chosen, rejected = scores[:, 0], scores[:, 1]
        return {
            "eval/loss": pairwise_loss(chosen, rejected, self.cfg.algorithm.rm.margin).mean().item(),
            "eval/accuracy": pairwise_accuracy(chosen, rejected).item(),
        }
