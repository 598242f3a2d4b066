"""Offline DPO on Ray: the policy learns from preference pairs against a frozen reference.

The roles and the reference's logprobs (log pi_ref(chosen), log pi_ref(rejected) of every pair:
live, or precomputed [N, 2] per split) are `reference_scoring.ReferenceScoringDriver`'s.

The loop is `offline.OfflineDriver`'s; a step is one `PolicyTrainer.dpo_step` on
train_batch_size pairs. Metrics per step (TRL's names): loss, rewards/chosen, rewards/rejected,
rewards/accuracies, rewards/margins, logps/chosen, logps/rejected, time/step,
throughput/pairs_per_s, policy/grad_norm, policy/lr; on data.eval: eval/loss (the DPO loss, without
the nll_coef term), eval/rewards/accuracies, eval/rewards/margins, eval/rewards/chosen,
eval/rewards/rejected. The reference's eval logprobs are computed once: it never changes.
"""

from __future__ import annotations

import time

import torch

from rlhf.algorithms.dpo import dpo_loss, preference_logps
from rlhf.algorithms.reward import pairwise_accuracy
from rlhf.config import RLHFConfig
from rlhf.data.collate import collate_preference, pairs_as_rows
from rlhf.data.datasets import load_preference_dataset
from rlhf.drivers.offline import chunks, load_splits
from rlhf.drivers.reference_scoring import ReferenceScoringDriver


class DPODriver(ReferenceScoringDriver):
    name = "DPO"
    progress_keys = ("loss", "rewards/accuracies", "eval/rewards/accuracies")
    summary_keys = ("loss", "rewards/accuracies", "rewards/margins")

    def __init__(self, cfg: RLHFConfig):
        super().__init__(cfg)
        self.dpo = cfg.algorithm.dpo

    def load_data(self):
        return load_splits(self.cfg, self.tokenizer, load_preference_dataset)

    # -- scoring pairs ------------------------------------------------------------------------------
    def reference_logprobs(self, examples, indices) -> torch.Tensor:
        """[len(indices), 2]: the reference's (chosen, rejected) sequence logprobs of the pairs ``examples[indices]``."""
        return torch.cat([self._pair_logprobs(collate_preference([examples[i] for i in chunk], self.pad_id), reference=True)
                          for chunk in chunks(indices, self.eval_batch_size)])

    def _pair_logprobs(self, batch: dict, reference: bool) -> torch.Tensor:
        """[B, 2] sequence logprobs of a preference batch (as the loss type uses them: `preference_logps`),
        under the reference or the current policy."""
        rows = pairs_as_rows(batch)
        logps = preference_logps(self.sequence_logprobs(rows, reference), rows["loss_mask"], self.dpo.loss_type)
        return logps.view(2, -1).T  # rows are all chosen, then all rejected

    # -- the step and the eval ----------------------------------------------------------------------
    def train_step(self, indices: list[int]) -> dict[str, float]:
        start = time.time()
        batch = collate_preference([self.train_data[i] for i in indices], self.pad_id)
        ref = self.precomputed_reference(indices)
        if ref is None:
            ref = self._pair_logprobs(batch, reference=True)
        batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref[:, 0].contiguous(), ref[:, 1].contiguous()
        stats = self.trainer.scatter("dpo_step", batch)[0]  # already averaged over micro-batches and ranks
        seconds = time.time() - start
        return {**stats, "time/step": seconds, "throughput/pairs_per_s": len(indices) / seconds}

    def evaluate(self) -> dict[str, float]:
        ref = self.eval_reference()
        policy = torch.cat([self._pair_logprobs(collate_preference(chunk, self.pad_id), reference=False)
                            for chunk in self.eval_batches()])
        losses, chosen, rejected = dpo_loss(
            policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1],
            beta=self.dpo.beta, loss_type=self.dpo.loss_type, label_smoothing=self.dpo.label_smoothing,
        )
        return {
            "eval/loss": losses.mean().item(),
            "eval/rewards/accuracies": pairwise_accuracy(chosen, rejected).item(),
            "eval/rewards/margins": (chosen - rejected).mean().item(),
            "eval/rewards/chosen": chosen.mean().item(),
            "eval/rewards/rejected": rejected.mean().item(),
        }
