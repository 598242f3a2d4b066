"""The frozen reference of the offline preference algorithms (DPO, KTO): who scores with it, and its precomputed cache.

Roles (`cluster.active_roles`): the policy as data-parallel DeepSpeed ranks, and the reference
as replicas (`ReferenceWorker`, model.reference or the initial policy). With LoRA and
model.reference_from_base there is no reference actor: the policy scores the rows itself with
its adapter disabled (`PolicyTrainer.reference_sequence_logprobs`).

Reference logprobs of the training and eval examples come either

- live: computed by the reference for each step's examples, just before the policy's step; or
- precomputed (algorithm.<section>.precompute_ref_logprobs, the default): computed once, before the
  first step, for the training rows the run's steps will visit (`EpochSampler.visited_indices` of
  its total steps: every row when it covers whole epochs, the visited prefix of a last partial
  epoch when trainer.max_steps ends it earlier) and the whole eval set, kept with the dataset
  ([N, k] per split: `reference_logprobs`, NaN in rows not scored) and saved in
  <output_dir>/reference_logprobs.safetensors with a mask of the scored training rows and a
  fingerprint of the reference and the data. A resumed run reads them back and scores the rows
  its steps need that the cache lacks (a larger max_steps); a cache without a mask (older runs)
  holds every row. The scoring happens before a checkpoint's weights are loaded, so the policy
  still is the initial one. When the reference is the initial policy (model.reference unset) no
  reference actor starts at all: the policy scores the examples itself, so it has every CPU/GPU
  of the run to itself; otherwise the reference actors score them and are then killed to free
  their memory. The policy's steps see the same numbers either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rlhf.config import RLHFConfig
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
        self.train_ref: torch.Tensor | None = None  # [N, k] reference logprobs when precomputed (NaN: not scored)
        self.train_scored: torch.Tensor | None = None  # [N] bool: the rows of train_ref that hold scores
        self.eval_ref: torch.Tensor | None = None

    def reference_logprobs(self, examples, indices: Sequence[int]) -> torch.Tensor:
        """[len(indices), k]: the reference's logprobs of ``examples[indices]`` (k per example, e.g. chosen and rejected)."""
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

    def before_resume(self) -> None:
        # Before the checkpoint's weights replace the initial policy's, which may be the reference that scores.
        self.precompute_reference()

    def precompute_reference(self) -> None:
        """Score the training rows the run's steps visit and the eval set, reusing <output_dir>'s cache; then end the
        reference actors."""
        if not getattr(self.cfg.algorithm, self.section).precompute_ref_logprobs:
            return
        start = time.time()
        cache = Path(self.cfg.logging.output_dir) / REFERENCE_CACHE
        cached = self._load_reference_cache(cache)
        visited = torch.from_numpy(self.sampler.visited_indices(self.total_steps))
        missing = visited if self.train_scored is None else visited[~self.train_scored[visited]]
        if len(missing):
            scores = self.reference_logprobs(self.train_data, missing.tolist())
            if self.train_ref is None:
                self.train_ref = torch.full((len(self.train_data), scores.shape[1]), float("nan"))
                self.train_scored = torch.zeros(len(self.train_data), dtype=torch.bool)
            self.train_ref[missing], self.train_scored[missing] = scores, True
        if self.eval_data is not None:
            self.eval_reference()
        if not cached or len(missing):
            tensors = {"train": self.train_ref, "train_scored": self.train_scored}
            save_file(tensors if self.eval_ref is None else {**tensors, "eval": self.eval_ref}, str(cache),
                      metadata={"fingerprint": self._reference_fingerprint()})
        log.info("reference logprobs of the %d training examples the run's %d steps visit (of %d): %d scored in "
                 "%.1fs, the rest read from %s", len(visited), self.total_steps, len(self.train_data), len(missing),
                 time.time() - start, cache)
        self.drop_role("reference")

    def eval_reference(self) -> torch.Tensor:
        """[N_eval, k] reference logprobs of every eval example, scored on first use (or precomputed)."""
        if self.eval_ref is None:
            self.eval_ref = self.reference_logprobs(self.eval_data, range(len(self.eval_data)))
        return self.eval_ref

    def precomputed_reference(self, indices: list[int]) -> torch.Tensor | None:
        """[B, k] precomputed reference logprobs of training rows ``indices``; None when they are computed live."""
        if self.train_scored is None:
            return None
        if not self.train_scored[indices].all():  # never train against the NaN of a row the precompute skipped
            raise RuntimeError(f"reference logprobs of training rows {[i for i in indices if not self.train_scored[i]]} "
                               f"were not precomputed (the run visits rows beyond its planned {self.total_steps} steps)")
        return self.train_ref[indices]

    def _reference_fingerprint(self) -> str:
        """What the cached reference logprobs depend on: the reference model and the tokenized examples."""
        cfg = self.cfg
        key = {"reference": cfg.model.reference or cfg.model.policy, "from_base": cfg.model.reference_from_base,
               "data": cfg.data.model_dump(mode="json"), "pairs": [len(self.train_data), len(self.eval_data or [])],
               **self.cache_key()}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def _load_reference_cache(self, path: Path) -> bool:
        """Read ``path`` into train_ref, train_scored and eval_ref when it was made for this reference and data."""
        if not path.is_file():
            return False
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("fingerprint") != self._reference_fingerprint():
                return False
        tensors = load_file(str(path))
        self.train_ref, self.eval_ref = tensors["train"], tensors.get("eval")
        # a cache without a mask was written when every training row was scored
        self.train_scored = tensors.get("train_scored", torch.ones(len(self.train_ref), dtype=torch.bool))
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
