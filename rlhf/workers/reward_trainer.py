"""The reward-model trainer role: Bradley-Terry steps on preference pairs, or regression steps on
scored responses (algorithm.rm.objective), in a DeepSpeed engine.

The model is a 1-label sequence-classification model (`load_reward_model`) started from
model.policy: an SFT policy (a causal LM: its backbone is reused, the score head is new) or an
existing reward model to train further. What `save_pretrained` writes is a plain
`<Arch>ForSequenceClassification` directory with its tokenizer, usable directly as
`model.reward` of a PPO run (`RewardWorker`) or with `AutoModelForSequenceClassification`.

Batches are preference batches (`rlhf.data.collate.collate_preference`) or scored batches
(`rlhf.data.collate.collate_scored`); the score of a sequence is the head's output at its last
real token (`rlhf.models.forward.sequence_scores`, the same pooling the reward role uses when it
scores rollouts).
"""

from __future__ import annotations

import torch

from rlhf.algorithms.loss_agg import row_share
from rlhf.algorithms.reward import (
    pairwise_accuracy,
    pairwise_loss,
    pearson_from_moments,
    regression_loss,
    score_moments,
)
from rlhf.config import RLHFConfig
from rlhf.data.collate import pairs_as_rows
from rlhf.models.forward import sequence_scores
from rlhf.models.loading import load_reward_model
from rlhf.workers.trainer_base import Batch, MicroBatchLoss, TrainerBase


class RewardTrainer(TrainerBase):
    """One data-parallel rank of a reward model being trained; learning rate trainer.learning_rate."""

    role = "reward"
    stat_prefix = "reward"

    def __init__(self, cfg: RLHFConfig, model_path: str | None = None):
        super().__init__(cfg, model_path or cfg.model.policy)

    def _load_model(self, path: str):
        return load_reward_model(path, self.cfg.model.dtype, self.cfg.model.gradient_checkpointing)

    def pair_scores(self, batch: Batch) -> torch.Tensor:
        """Scores of each pair's chosen and rejected sequence: [B, 2] (column 0 chosen, 1 rejected)."""

        def forward(module, mb):
            chosen, rejected = _pair_scores(module, mb)
            return torch.stack([chosen, rejected], dim=1)

        return self._forward_no_grad(batch, forward).reshape(-1, 2)

    def rm_step(self, minibatch: Batch) -> dict[str, float]:
        """One optimizer step of the Bradley-Terry loss on this rank's shard of preference pairs.

        loss = pairwise_loss(r_chosen, r_rejected, algorithm.rm.margin) averaged over the step's pairs
        (all micro-batches and ranks); chosen and rejected go through the model in one forward pass
        ([2B, T]). Returns loss, accuracy, rewards/chosen, rewards/rejected, rewards/margins (mean
        scores), reward/grad_norm, reward/lr.
        """
        margin = self.cfg.algorithm.rm.margin

        def count_fn(mb):
            return {"pairs": len(mb["chosen_input_ids"])}

        def loss_fn(mb, counts):
            chosen, rejected = _pair_scores(self.engine, mb)
            pairs = counts["pairs"]
            loss = row_share(pairwise_loss(chosen, rejected, margin), pairs)
            chosen, rejected = chosen.detach(), rejected.detach()
            return MicroBatchLoss(loss, {
                "loss": loss.detach(),
                "accuracy": pairwise_accuracy(chosen, rejected, pairs),
                "rewards/chosen": row_share(chosen, pairs),
                "rewards/rejected": row_share(rejected, pairs),
                "rewards/margins": row_share(chosen - rejected, pairs),
            })

        return self._train_on(minibatch, count_fn, loss_fn)

    def scores(self, batch: Batch) -> torch.Tensor:
        """The score of each row of a full-sequence batch (input_ids, attention_mask [B, T]): [B]."""
        return self._forward_no_grad(batch, lambda module, mb: sequence_scores(module, mb["input_ids"], mb["attention_mask"]))

    def regression_step(self, minibatch: Batch) -> dict[str, float]:
        """One optimizer step of the squared-error regression on this rank's shard of scored responses.

        minibatch: input_ids, attention_mask [B, T] and targets [B] (`rlhf.data.collate.collate_scored`,
        standardised by the driver with algorithm.rm.normalize_targets). loss = the step's MSE,
        (1/N) sum_b regression_loss(r_b, t_b) over its N responses (all micro-batches and ranks).
        Returns loss, pearson (of scores and targets over the step), rewards/mean, reward/grad_norm, reward/lr.
        """

        def count_fn(mb):
            return {"rows": len(mb["input_ids"])}

        def loss_fn(mb, counts):
            scores = sequence_scores(self.engine, mb["input_ids"], mb["attention_mask"])
            rows = counts["rows"]
            loss = row_share(regression_loss(scores, mb["targets"]), rows)
            return MicroBatchLoss(loss, {"loss": loss.detach(), **score_moments(scores.detach(), mb["targets"], rows)})

        stats = self._train_on(minibatch, count_fn, loss_fn)
        moments = {key: stats.pop(key) for key in list(stats) if key.startswith("moments/")}
        return {**stats, "pearson": pearson_from_moments(moments), "rewards/mean": moments["moments/score"]}


def _pair_scores(model, mb: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    rows = pairs_as_rows(mb)
    scores = sequence_scores(model, rows["input_ids"], rows["attention_mask"])
    n = len(scores) // 2
    return scores[:n], scores[n:]
