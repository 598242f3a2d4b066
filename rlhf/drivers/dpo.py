"""Offline DPO on Ray: the policy learns from preference pairs against a frozen reference.

Roles (`cluster.active_roles`): the policy as data-parallel DeepSpeed ranks, and the reference
as replicas (`ReferenceWorker`, model.reference or the initial policy). With LoRA and
model.reference_from_base there is no reference actor: the policy scores the pairs itself with
its adapter disabled (`PolicyTrainer.reference_sequence_logprobs`).

Reference logprobs, log pi_ref(chosen) and log pi_ref(rejected) of every pair, come either

- live: computed by the reference for each step's pairs, just before the policy's step; or
- precomputed (algorithm.dpo.precompute_ref_logprobs, the default): computed once for the whole
  training and eval sets before the first step, kept with the dataset ([N, 2] per split) and saved
  in <output_dir>/reference_logprobs.safetensors (a resumed run reads them back). When the
  reference is the initial policy (model.reference unset) no reference actor starts at all: the
  policy scores the pairs itself before its first update, so it has every CPU/GPU of the run to
  itself (`reference_actor_needed`); otherwise the reference actors score them and are then
  killed to free their memory. The policy's steps see the same numbers either way.

The loop is `offline.OfflineDriver`'s; a step is one `PolicyTrainer.dpo_step` on
train_batch_size pairs. Metrics per step (TRL's names): loss, rewards/chosen, rewards/rejected,
rewards/accuracies, rewards/margins, logps/chosen, logps/rejected, time/step,
throughput/pairs_per_s, policy/grad_norm, policy/lr; on data.eval: eval/loss (the DPO loss, without
the nll_coef term), eval/rewards/accuracies, eval/rewards/margins, eval/rewards/chosen,
eval/rewards/rejected. The reference's eval logprobs are computed once: it never changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlhf.algorithms.dpo import dpo_loss, preference_logps
from rlhf.algorithms.reward import pairwise_accuracy
from rlhf.config import RLHFConfig
from rlhf.data.collate import collate_preference, pairs_as_rows
from rlhf.data.datasets import load_preference_dataset
from rlhf.drivers.checkpoint import CheckpointError
from rlhf.drivers.cluster import active_roles
from rlhf.drivers.offline import OfflineDriver, chunks, load_splits
from rlhf.workers.group import WorkerGroup
from rlhf.workers.policy import PolicyTrainer
from rlhf.workers.reference import ReferenceWorker

log = logging.getLogger(__name__)

REFERENCE_CACHE = "reference_logprobs.safetensors"  # in <output_dir>: the precomputed [N, 2] per split


class DPODriver(OfflineDriver):
    name = "DPO"
    progress_keys = ("loss", "rewards/accuracies", "eval/rewards/accuracies")
    summary_keys = ("loss", "rewards/accuracies", "rewards/margins")

    def __init__(self, cfg: RLHFConfig):
        super().__init__(cfg)
        self.dpo = cfg.algorithm.dpo
        self.train_ref: torch.Tensor | None = None  # [N, 2] reference logprobs (chosen, rejected) when precomputed
        self.eval_ref: torch.Tensor | None = None

    def load_data(self):
        return load_splits(self.cfg, self.tokenizer, load_preference_dataset)

    def create_roles(self) -> dict[str, WorkerGroup]:
        cfg = self.cfg
        groups = {"policy": self.start_group(PolicyTrainer, cfg, self.total_steps, role="policy", pool="policy")}
        if "reference" in active_roles(cfg):
            groups["reference"] = self.start_group(ReferenceWorker, cfg, role="reference", pool="reference")
        return groups

    def before_training(self) -> None:
        if not self.dpo.precompute_ref_logprobs:
            return
        cache = Path(self.cfg.logging.output_dir) / REFERENCE_CACHE
        if self._load_reference_cache(cache):
            log.info("reference logprobs of %d pairs read from %s", len(self.train_ref), cache)
        else:
            if "reference" not in self.groups and not self.cfg.model.reference_from_base and self.step > 0:
                raise CheckpointError(
                    f"{cache}: missing or made for other data; the resumed policy is no longer the reference that "
                    "scores the pairs (set checkpoint.resume=never, or algorithm.dpo.precompute_ref_logprobs=false)"
                )
            start = time.time()
            self.train_ref = self.reference_logprobs(self.train_data)
            if self.eval_data is not None:
                self.eval_ref = self.reference_logprobs(self.eval_data)
            tensors = {"train": self.train_ref} if self.eval_ref is None else {"train": self.train_ref, "eval": self.eval_ref}
            save_file(tensors, str(cache), metadata={"fingerprint": self._reference_fingerprint()})
            log.info("reference logprobs of %d pairs precomputed in %.1fs", len(self.train_ref), time.time() - start)
        self.drop_role("reference")

    def _reference_fingerprint(self) -> str:
        """What the cached reference logprobs depend on: the reference model and the tokenized pairs."""
        cfg = self.cfg
        key = {"reference": cfg.model.reference or cfg.model.policy, "from_base": cfg.model.reference_from_base,
               "data": cfg.data.model_dump(mode="json"), "pairs": [len(self.train_data), len(self.eval_data or [])]}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def _load_reference_cache(self, path: Path) -> bool:
        if not path.is_file():
            return False
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("fingerprint") != self._reference_fingerprint():
                return False
        tensors = load_file(str(path))
        self.train_ref, self.eval_ref = tensors["train"], tensors.get("eval")
        return True

    # -- scoring pairs ------------------------------------------------------------------------------
    def reference_logprobs(self, examples) -> torch.Tensor:
        """[N, 2]: the reference's (chosen, rejected) sequence logprobs of every pair in ``examples``."""
        return torch.cat([self._pair_logprobs(collate_preference(chunk, self.pad_id), reference=True)
                          for chunk in chunks(examples, self.eval_batch_size)])

    def _pair_logprobs(self, batch: dict, reference: bool) -> torch.Tensor:
        """[B, 2] sequence logprobs of a preference batch (as the loss type uses them: `preference_logps`),
        under the reference or the current policy."""
        rows = pairs_as_rows(batch)
        if not reference:
            parts = self.trainer.scatter("sequence_logprobs", rows)
        elif "reference" in self.groups:
            parts = self.groups["reference"].scatter("sequence_logprobs", rows)
        elif self.cfg.model.reference_from_base:
            parts = self.trainer.scatter("reference_sequence_logprobs", rows)
        else:  # precomputing before the first update: the policy is still the reference
            parts = self.trainer.scatter("sequence_logprobs", rows)
        logps = preference_logps(WorkerGroup.gather_cat(parts), rows["loss_mask"], self.dpo.loss_type)
        return logps.view(2, -1).T  # rows are all chosen, then all rejected

    # -- the step and the eval ----------------------------------------------------------------------
    def train_step(self, indices: list[int]) -> dict[str, float]:
        start = time.time()
        batch = collate_preference([self.train_data[i] for i in indices], self.pad_id)
        ref = self.train_ref[indices] if self.train_ref is not None else self._pair_logprobs(batch, reference=True)
        batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref[:, 0].contiguous(), ref[:, 1].contiguous()
        stats = self.trainer.scatter("dpo_step", batch)[0]  # already averaged over micro-batches and ranks
        seconds = time.time() - start
        return {**stats, "time/step": seconds, "throughput/pairs_per_s": len(indices) / seconds}

    def evaluate(self) -> dict[str, float]:
        if self.eval_ref is None:
            self.eval_ref = self.reference_logprobs(self.eval_data)
        policy = torch.cat([self._pair_logprobs(collate_preference(chunk, self.pad_id), reference=False)
                            for chunk in self.eval_batches()])
        losses, chosen, rejected = dpo_loss(
            policy[:, 0], policy[:, 1], self.eval_ref[:, 0], self.eval_ref[:, 1],
            beta=self.dpo.beta, loss_type=self.dpo.loss_type, label_smoothing=self.dpo.label_smoothing,
        )
        return {
            "eval/loss": losses.mean().item(),
            "eval/rewards/accuracies": pairwise_accuracy(chosen, rejected).item(),
            "eval/rewards/margins": (chosen - rejected).mean().item(),
            "eval/rewards/chosen": chosen.mean().item(),
            "eval/rewards/rejected": rejected.mean().item(),
        }
