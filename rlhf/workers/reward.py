"""The reward role: one scalar score per sequence, from a reward model or from a rule.

Reward model (model.reward): the 1-label sequence-classification model's output at the last
real token (`sequence_scores`). When its tokenizer differs from the policy's, the sequences are
decoded with the policy's tokenizer and re-tokenized with the reward model's.

Rule (model.reward_fn = 'module:function'): imported once, called per sample as
fn(prompt, response) -> float, with the raw prompt string and the response decoded with
special tokens (EOS, padding) skipped.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from rlhf.config import RLHFConfig
from rlhf.models.forward import sequence_scores
from rlhf.models.loading import device_for, load_reward_model, load_tokenizer
from rlhf.workers.trainer_base import (
    Batch,
    RoleWorker,
    batch_size,
    split_batch,
    to_device,
)
from rlhf.workers.threads import match_cpu_share


def import_reward_fn(spec: str) -> Callable[[str, str], float]:
    """'package.module:function' -> the function."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"model.reward_fn: expected 'module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model.reward_fn: cannot import {spec!r}: {exc}") from exc
    if not callable(fn):
        raise TypeError(f"model.reward_fn: {spec!r} is not callable")
    return fn


class RewardWorker(RoleWorker):
    """Scores sequences; holds a frozen reward model (replica per actor) or a rule function."""

    def __init__(self, cfg: RLHFConfig, model_path: str | None = None):
        match_cpu_share()
        self.cfg = cfg
        self.device = device_for(cfg)
        self.policy_tokenizer = load_tokenizer(cfg.model.policy)
        self.reward_fn = import_reward_fn(cfg.model.reward_fn) if cfg.model.reward_fn else None
        self.model = None
        if self.reward_fn is None:
            path = model_path or cfg.model.reward
            if not path:
                raise ValueError("reward: set model.reward or model.reward_fn")
            self.model = load_reward_model(path, cfg.model.dtype).to(self.device).eval()
            self.model.requires_grad_(False)
            self.tokenizer = load_tokenizer(path)
            self.retokenize = self.tokenizer.get_vocab() != self.policy_tokenizer.get_vocab()

    def scores(self, batch: Batch, prompts: list[str] | None = None) -> torch.Tensor:
        """One float score per row: [B] on the CPU.

        ``prompts`` (the raw prompt strings, needed by a rule) may also come inside ``batch``
        under "prompts".
        """
        if prompts is None:
            prompts = batch.get("prompts")
        if self.reward_fn is not None:
            if prompts is None or len(prompts) != batch_size(batch):
                raise ValueError(f"reward: the rule needs one prompt string per row, got {None if prompts is None else len(prompts)}")
            responses = self.decode_responses(batch)
            return torch.tensor([float(self.reward_fn(p, r)) for p, r in zip(prompts, responses)], dtype=torch.float32)
        return self._model_scores(batch)

    def decode_responses(self, batch: Batch) -> list[str]:
        """Response texts (special tokens skipped) from the response part of each row."""
        R = batch["response_mask"].shape[1]
        ids, mask = batch["input_ids"][:, -R:], batch["response_mask"].bool()
        return [self.policy_tokenizer.decode(row[m].tolist(), skip_special_tokens=True) for row, m in zip(ids, mask)]

    @torch.no_grad()
    def _model_scores(self, batch: Batch) -> torch.Tensor:
        model_batch = self._retokenized(batch) if self.retokenize else batch
        if batch_size(model_batch) == 0:
            return torch.empty(0)
        outputs = []
        for mb in split_batch(model_batch, self.cfg.trainer.micro_batch_size):
            mb = to_device(mb, self.device)
            outputs.append(sequence_scores(self.model, mb["input_ids"], mb["attention_mask"]).float().cpu())
        return torch.cat(outputs)

    def _retokenized(self, batch: Batch) -> Batch:
        texts = [
            self.policy_tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=False)
            for row, m in zip(batch["input_ids"], batch["attention_mask"])
        ]
        enc = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
