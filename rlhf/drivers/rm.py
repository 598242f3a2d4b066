"""Reward-model training on Ray: Bradley-Terry on preference pairs, or regression on scored responses.

The model starts from model.policy (typically the SFT policy: its backbone is reused under a new
1-label score head) and trains as `RewardTrainer` ranks in the policy pool. The loop is
`offline.OfflineDriver`'s; what a step trains on is algorithm.rm.objective's entry in `OBJECTIVES`:

- ``bradley_terry``: one `RewardTrainer.rm_step` on train_batch_size preference pairs. Metrics per
  step: loss, accuracy (chosen scored above rejected), rewards/{chosen,rejected,margins},
  throughput/pairs_per_s; on data.eval: eval/loss, eval/accuracy.
- ``regression``: one `RewardTrainer.regression_step` on train_batch_size scored responses (HelpSteer
  rows, target data.score_attribute; standardised with the training set's mean and std when
  algorithm.rm.normalize_targets). Metrics per step: loss (the MSE), pearson (scores vs targets),
  rewards/mean, throughput/responses_per_s; on data.eval: eval/loss (MSE), eval/pearson.

Both add time/step, reward/grad_norm and reward/lr. The final model, <output_dir>/reward, is a
sequence-classification model that a PPO run takes as model.reward.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhf.algorithms.reward import (
    pairwise_accuracy,
    pairwise_loss,
    pearson,
    regression_loss,
    standardize,
    target_moments,
)
from rlhf.data.collate import collate_preference, collate_scored
from rlhf.data.datasets import load_preference_dataset, load_scored_dataset
from rlhf.drivers.offline import Loader, OfflineDriver, load_splits
from rlhf.workers.group import WorkerGroup
from rlhf.workers.reward_trainer import RewardTrainer


class RMDriver(OfflineDriver):
    name = "RM"
    trainer_role = "reward"
    model_dir = "reward"

    def __init__(self, cfg):
        self.objective = OBJECTIVES[cfg.algorithm.rm.objective]
        self.progress_keys, self.summary_keys = self.objective.progress_keys, self.objective.summary_keys
        self.target_moments: tuple[float, float] | None = None  # (mean, std) of the training targets, when standardised
        super().__init__(cfg)

    def load_data(self):
        train, held_out = load_splits(self.cfg, self.tokenizer, self.objective.loader)
        if self.cfg.algorithm.rm.normalize_targets:
            self.target_moments = target_moments(torch.tensor([e.score for e in train]))
        return train, held_out

    def create_roles(self) -> dict[str, WorkerGroup]:
        # The trained model is the plan's "policy" (cluster.active_roles): its pool and resources.
        group = self.start_group(RewardTrainer, self.cfg, role="reward", pool="policy")
        return {"reward": group}

    def train_step(self, indices: list[int]) -> dict[str, float]:
        start = time.time()
        batch = self.objective.collate(self, [self.train_data[i] for i in indices])
        stats = self.trainer.scatter(self.objective.step, batch)[0]
        seconds = time.time() - start
        return {**stats, "time/step": seconds, f"throughput/{self.objective.unit}_per_s": len(indices) / seconds}

    def evaluate(self) -> dict[str, float]:
        return self.objective.evaluate(self)


def _pairs(driver: RMDriver, examples: list) -> dict:
    return collate_preference(examples, driver.pad_id)


def _scored(driver: RMDriver, examples: list) -> dict:
    batch = collate_scored(examples, driver.pad_id)
    if driver.target_moments is not None:
        batch["targets"] = standardize(batch["targets"], *driver.target_moments)
    return batch


def _evaluate_pairs(driver: RMDriver) -> dict[str, float]:
    scores = torch.cat([WorkerGroup.gather_cat(driver.trainer.scatter("pair_scores", _pairs(driver, examples)))
                        for examples in driver.eval_batches()])
    chosen, rejected = scores[:, 0], scores[:, 1]
    return {
        "eval/loss": pairwise_loss(chosen, rejected, driver.cfg.algorithm.rm.margin).mean().item(),
        "eval/accuracy": pairwise_accuracy(chosen, rejected).item(),
    }


def _evaluate_regression(driver: RMDriver) -> dict[str, float]:
    batches = [_scored(driver, examples) for examples in driver.eval_batches()]
    scores = torch.cat([WorkerGroup.gather_cat(driver.trainer.scatter("scores", batch)) for batch in batches])
    targets = torch.cat([batch["targets"] for batch in batches])
    return {"eval/loss": regression_loss(scores, targets).mean().item(), "eval/pearson": pearson(scores, targets)}


@dataclass(frozen=True)
class Objective:
    """One algorithm.rm.objective: the data it trains on, the trainer's step and its eval."""

    loader: Loader  # the tokenized dataset kind
    collate: Callable[[RMDriver, list], dict]  # examples -> the step's batch
    step: str  # the `RewardTrainer` method of one optimizer step
    evaluate: Callable[[RMDriver], dict[str, float]]  # metrics on data.eval
    unit: str  # what an example is, in throughput/<unit>_per_s
    progress_keys: tuple[str, ...]
    summary_keys: tuple[str, ...]


OBJECTIVES: dict[str, Objective] = {
    "bradley_terry": Objective(load_preference_dataset, _pairs, "rm_step", _evaluate_pairs, "pairs",
                               ("loss", "accuracy", "eval/accuracy"), ("loss", "accuracy")),
    "regression": Objective(load_scored_dataset, _scored, "regression_step", _evaluate_regression, "responses",
                            ("loss", "pearson", "eval/pearson"), ("loss", "pearson")),
}
