"""The critic role: per-token values and clipped value-loss steps, in a DeepSpeed engine.

The value model is a 1-label token-classification model (`load_value_model`); by default it
starts from the reward model (model.critic unset), reusing its backbone.
"""

from __future__ import annotations

import torch

from rlhf.algorithms.loss_agg import agg_count
from rlhf.algorithms.ppo import value_loss
from rlhf.config import RLHFConfig
from rlhf.models.forward import response_values
from rlhf.models.loading import load_value_model
from rlhf.workers.trainer_base import Batch, MicroBatchLoss, TrainerBase


class CriticTrainer(TrainerBase):
    """One data-parallel rank of the value model; learning rate trainer.critic_learning_rate."""

    role = "critic"
    stat_prefix = "value"

    def __init__(self, cfg: RLHFConfig, model_path: str | None = None):
        path = model_path or cfg.model.critic or cfg.model.reward
        if not path:
            raise ValueError("critic: no model path (set model.critic or model.reward)")
        super().__init__(cfg, path)

    def _load_model(self, path: str):
        return load_value_model(path, self.cfg.model.dtype, self.cfg.model.gradient_checkpointing)

    def _learning_rate(self) -> float:
        return self.cfg.trainer.critic_learning_rate

    def values(self, batch: Batch) -> torch.Tensor:
        """V(s_t) before each response token: [B, R], 0 outside the response mask."""

        def forward(module, mb):
            values = response_values(module, mb["input_ids"], mb["attention_mask"], mb["response_mask"].shape[1])
            return torch.where(mb["response_mask"].bool(), values, torch.zeros_like(values))

        return self._forward_no_grad(batch, forward)

    def value_step(self, minibatch: Batch) -> dict[str, float]:
        """One optimizer step of the clipped value loss (algorithm.ppo.value_clip) on this rank's shard.

        minibatch: input_ids, attention_mask, response_mask, old_values [B, R], returns [B, R].
        The loss is aggregated over the whole step with trainer.loss_agg_mode; the loss backpropagated
        is value_loss_coef * loss; value/loss reports the unscaled loss.
        Returns value/loss, value/clipfrac, value/grad_norm, value/lr.
        """
        ppo = self.cfg.algorithm.ppo
        mode = self.cfg.trainer.loss_agg_mode

        def count_fn(mb):
            return {"response": agg_count(mb["response_mask"], mode)}

        def loss_fn(mb, counts):
            mask = mb["response_mask"]
            values = response_values(self.engine, mb["input_ids"], mb["attention_mask"], mask.shape[1])
            loss, stats = value_loss(
                values, mb["old_values"].to(values.dtype), mb["returns"].to(values.dtype), mask, ppo.value_clip,
                mode, counts["response"],
            )
            return MicroBatchLoss(ppo.value_loss_coef * loss, {"value/loss": loss.detach(), "value/clipfrac": stats["clipfrac"]})

        return self._train_on(minibatch, count_fn, loss_fn)
