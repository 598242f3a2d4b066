"""Offline KTO on Ray: the policy learns from unpaired desirable/undesirable examples against a frozen reference.

The data are `TokenizedUnpaired` examples (format ``unpaired``, or preference pairs split into one
desirable and one undesirable example). Example i's mismatched KL row is its prompt with the
completion of example `collate.kl_partners`[i], fixed per data set. The roles and the reference's
logprobs (per example: its completion and its KL row, [N, 2] per split, live or precomputed) are
`reference_scoring.ReferenceScoringDriver`'s.

A step on train_batch_size examples:
1. the policy scores the step's KL rows without gradients (`PolicyTrainer.sequence_logprobs`);
2. z_ref = `kto_reference_point` of those and the reference's, over the whole step (so it does not
   depend on the micro-batch split or the number of ranks);
3. one `PolicyTrainer.kto_step` with z_ref.
TRL computes the policy's KL logprobs in the same no-grad way, per device batch, before its update.

Metrics per step (TRL's names): loss, kl (z_ref), rewards/chosen, rewards/rejected, rewards/margins,
logps/chosen, logps/rejected (chosen = desirable), time/step, throughput/examples_per_s,
policy/grad_norm, policy/lr; on data.eval the same with an eval/ prefix (z_ref over the whole eval
set). The reference's eval logprobs are computed once: it never changes. At start the driver logs a
warning when the desirable/undesirable weights are outside the paper's recommended ratio.
"""

from __future__ import annotations

import logging
import time

import torch

from rlhf.algorithms.kto import kto_loss, kto_reference_point, kto_stats, weight_ratio_warning
from rlhf.config import RLHFConfig
from rlhf.data.collate import collate_sft, collate_unpaired, kl_partners, mismatched_examples
from rlhf.data.datasets import load_unpaired_dataset
from rlhf.drivers.offline import chunks, load_splits
from rlhf.drivers.reference_scoring import ReferenceScoringDriver

log = logging.getLogger(__name__)


class KTODriver(ReferenceScoringDriver):
    name = "KTO"
    progress_keys = ("loss", "kl", "rewards/margins", "eval/rewards/margins")
    summary_keys = ("loss", "kl", "rewards/chosen", "rewards/rejected")

    def __init__(self, cfg: RLHFConfig):
        super().__init__(cfg)
        self.kto = cfg.algorithm.kto
        self.train_partners: list[int] = []  # `load_data`'s: each example's KL row partner
        self.eval_partners: list[int] | None = None

    def load_data(self):
        train, held_out = load_splits(self.cfg, self.tokenizer, load_unpaired_dataset)
        self.train_partners = kl_partners([e.prompt_ids for e in train])
        self.eval_partners = kl_partners([e.prompt_ids for e in held_out]) if held_out is not None else None
        n_desirable = sum(e.desirable for e in train)
        warning = weight_ratio_warning(n_desirable, len(train) - n_desirable,
                                       self.kto.desirable_weight, self.kto.undesirable_weight)
        if warning:
            log.warning("algorithm.kto: %s", warning)
        return train, held_out

    def cache_key(self) -> dict:
        return {"algorithm": "kto"}  # per example: (completion, mismatched KL row)

    # -- scoring ------------------------------------------------------------------------------------
    def reference_logprobs(self, examples, indices) -> torch.Tensor:
        """[len(indices), 2]: the reference's logprobs of each example's completion and of its mismatched KL row."""
        partners = self.train_partners if examples is self.train_data else self.eval_partners
        return torch.cat([self._logprobs(examples, chunk, partners, reference=True)
                          for chunk in chunks(indices, self.eval_batch_size)])

    def _rows(self, examples, indices: list[int], partners: list[int]) -> tuple[dict, dict]:
        """The collated rows of ``examples[indices]``: their own (prompt, completion), and their KL rows."""
        own = [examples[i] for i in indices]
        kl = mismatched_examples(own, [examples[partners[i]] for i in indices])
        return collate_sft(own, self.pad_id), collate_sft(kl, self.pad_id)

    def _logprobs(self, examples, indices: list[int], partners: list[int], reference: bool) -> torch.Tensor:
        """[B, 2]: (completion, KL row) summed logprobs of ``examples[indices]`` under the reference or the policy."""
        own, kl = self._rows(examples, indices, partners)
        return torch.stack([self.sequence_logprobs(own, reference), self.sequence_logprobs(kl, reference)], dim=1)

    # -- the step and the eval ----------------------------------------------------------------------
    def train_step(self, indices: list[int]) -> dict[str, float]:
        start = time.time()
        ref = self.precomputed_reference(indices)
        if ref is None:
            ref = self._logprobs(self.train_data, indices, self.train_partners, reference=True)
        _, kl_rows = self._rows(self.train_data, indices, self.train_partners)
        z_ref = kto_reference_point(self.sequence_logprobs(kl_rows, reference=False), ref[:, 1]).item()
        batch = collate_unpaired([self.train_data[i] for i in indices], self.pad_id)
        batch["ref_logps"] = ref[:, 0].contiguous()
        stats = self.trainer.scatter("kto_step", batch, kl=z_ref)[0]  # already summed over micro-batches and ranks
        seconds = time.time() - start
        return {**stats, "kl": z_ref, "time/step": seconds, "throughput/examples_per_s": len(indices) / seconds}

    def evaluate(self) -> dict[str, float]:
        ref = self.eval_reference()
        policy = torch.cat([self._logprobs(self.eval_data, chunk, self.eval_partners, reference=False)
                            for chunk in chunks(range(len(self.eval_data)), self.eval_batch_size)])
        z_ref = kto_reference_point(policy[:, 1], ref[:, 1])
        desirable = torch.tensor([e.desirable for e in self.eval_data], dtype=torch.bool)
        losses, rewards = kto_loss(policy[:, 0], ref[:, 0], desirable, z_ref, beta=self.kto.beta,
                                   desirable_weight=self.kto.desirable_weight, undesirable_weight=self.kto.undesirable_weight)
        stats = kto_stats(losses, rewards, policy[:, 0], desirable)
        return {"eval/kl": z_ref.item(), **{f"eval/{k}": v.item() for k, v in stats.items()}}
