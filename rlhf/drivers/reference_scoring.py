"""The frozen reference of the offline preference algorithms (DPO, KTO): who scores with it, and its precomputed cache.

Roles (`cluster.active_roles`): the policy as data-parallel DeepSpeed ranks, and the reference
as replicas (`ReferenceWorker`, model.reference or the initial policy). With LoRA and
model.reference_from_base there is no reference actor: the policy scores the rows itself with
its adapter disabled (`PolicyTrainer.reference_sequence_logprobs`).

Reference logprobs of the training and eval examples come either

- live: computed by the reference for each step's examples, just before the policy's step; or
- precomputed (algorithm.<section>.precompute_ref_logprobs, the default): computed once for the
  whole training and eval sets before the first step, kept with the dataset ([N, k] per split:
  `reference_logprobs`) and saved in <output_dir>/reference_logprobs.safetensors with a
  fingerprint of the reference and the data (a resumed run reads them back). When the reference
  is the initial policy (model.reference unset) no reference actor starts at all: the policy
  scores the examples itself before its first update, so it has every CPU/GPU of the run to
  itself; otherwise the reference actors score them and are then killed to free their memory.
  The policy's steps see the same numbers either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlhf.config import RLHFConfig
from rlhf.drivers.checkpoint import CheckpointError
from rlhf.drivers.cluster import active_roles
from rlhf.drivers.offline import OfflineDriver
from rlhf.registry import get_algorithm
from rlhf.workers.group import WorkerGroup
from rlhf.workers.policy import PolicyTrainer
from rlhf.workers.reference import ReferenceWorker

log = logging.getLogger(__name__)

REFERENCE_CACHE = "reference_logprobs.safetensors"  # in <output_dir>: the precomputed [N, k] per split


class ReferenceScoringDriver(OfflineDriver):
    """An offline driver whose loss compares the policy with a frozen reference; subclasses give
    `reference_logprobs` (what is precomputed per example) and may extend `cache_key`."""

    def __init__(self, cfg: RLHFConfig):
        super().__init__(cfg)
        self.section = get_algorithm(cfg.algorithm.name).section  # its config has precompute_ref_logprobs
        self.train_ref: torch.Tensor | None = None  # [N, k] reference logprobs when precomputed
        self.eval_ref: torch.Tensor | None = None

    def reference_logprobs(self, examples) -> torch.Tensor:
        """[N, k]: the reference's logprobs of every example (k per example, e.g. chosen and rejected)."""
        raise NotImplementedError

    def cache_key(self) -> dict:
        """What, beyond the reference model and the tokenized data, the cached logprobs depend on."""
        return {}

    def create_roles(self) -> dict[str, WorkerGroup]:
        cfg = self.cfg
        groups = {"policy": self.start_group(PolicyTrainer, cfg, role="policy", pool="policy")}
        if "reference" in active_roles(cfg):
            groups["reference"] = self.start_group(ReferenceWorker, cfg, role="reference", pool="reference")
        return groups

    def before_training(self) -> None:
        if not getattr(self.cfg.algorithm, self.section).precompute_ref_logprobs:
            return
        cache = Path(self.cfg.logging.output_dir) / REFERENCE_CACHE
        if self._load_reference_cache(cache):
            log.info("reference logprobs of %d examples read from %s", len(self.train_ref), cache)
        else:
            if "reference" not in self.groups and not self.cfg.model.reference_from_base and self.step > 0:
                raise CheckpointError(
                    f"{cache}: missing or made for other data; the resumed policy is no longer the reference that "
                    f"scores the examples (set checkpoint.resume=never, or algorithm.{self.section}.precompute_ref_logprobs=false)"
                )
            start = time.time()
            self.train_ref = self.reference_logprobs(self.train_data)
            if self.eval_data is not None:
                self.eval_ref = self.reference_logprobs(self.eval_data)
            tensors = {"train": self.train_ref} if self.eval_ref is None else {"train": self.train_ref, "eval": self.eval_ref}
            save_file(tensors, str(cache), metadata={"fingerprint": self._reference_fingerprint()})
            log.info("reference logprobs of %d examples precomputed in %.1fs", len(self.train_ref), time.time() - start)
        self.drop_role("reference")

    def _reference_fingerprint(self) -> str:
        """What the cached reference logprobs depend on: the reference model and the tokenized examples."""
        cfg = self.cfg
        key = {"reference": cfg.model.reference or cfg.model.policy, "from_base": cfg.model.reference_from_base,
               "data": cfg.data.model_dump(mode="json"), "pairs": [len(self.train_data), len(self.eval_data or [])],
               **self.cache_key()}
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

    def sequence_logprobs(self, rows: dict, reference: bool) -> torch.Tensor:
        """[B] summed logprobs of full-sequence rows (input_ids, attention_mask, loss_mask) under the
        reference or the current policy, from whichever actor holds it."""
        group, method = reference_scorer(self.groups, self.cfg) if reference else (self.trainer, "sequence_logprobs")
        return WorkerGroup.gather_cat(group.scatter(method, rows))


def reference_scorer(groups: dict[str, WorkerGroup], cfg: RLHFConfig) -> tuple[WorkerGroup, str]:
    """The group and method that score full-sequence rows under the reference: the reference actors; with
    LoRA's model.reference_from_base, the policy with its adapter disabled; otherwise the policy itself, which
    is then the reference (before its first update when precomputing; each round's start in iterative DPO)."""
    if "reference" in groups:
        return groups["reference"], "sequence_logprobs"
    if cfg.model.reference_from_base:
        return groups["policy"], "reference_sequence_logprobs"
    return groups["policy"], "sequence_logprobs"
