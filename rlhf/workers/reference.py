"""The reference role: a frozen copy of the initial policy that scores responses (PPO) and preference pairs (DPO).

Its PPO logprobs use rollout.temperature, like the policy's, so that the KL penalty compares the
two models on the same (temperature-scaled) distributions; DPO's sequence logprobs use
temperature 1, like the policy's DPO step. It runs without DeepSpeed: a frozen
model needs no optimizer state, and each actor holds a whole copy (replicas, not shards).
"""

from __future__ import annotations

import torch

from rlhf.config import RLHFConfig
from rlhf.models.forward import masked_sequence_logprobs, response_logprobs
from rlhf.models.loading import device_for, load_causal_lm
from rlhf.workers.trainer_base import (
    Batch,
    RoleWorker,
    batch_size,
    split_batch,
    to_device,
)
from rlhf.workers.threads import match_cpu_share


class ReferenceWorker(RoleWorker):
    """Frozen reference model; model.reference, else the initial policy."""

    def __init__(self, cfg: RLHFConfig, model_path: str | None = None):
        match_cpu_share()
        self.cfg = cfg
        self.device = device_for(cfg)
        path = model_path or cfg.model.reference or cfg.model.policy
        self.model = load_causal_lm(path, cfg.model.dtype).to(self.device).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, batch: Batch) -> torch.Tensor:
        """log pi_ref(y_t | x, y_<t) at rollout.temperature: [B, R] on the CPU, 0 outside the response mask."""
        R = batch["response_mask"].shape[1]
        if batch_size(batch) == 0:
            return torch.empty(0, R)
        outputs = []
        for mb in split_batch(batch, self.cfg.trainer.micro_batch_size):
            mb = to_device(mb, self.device)
            logp = response_logprobs(self.model, mb["input_ids"], mb["attention_mask"], R, self.cfg.rollout.temperature)
            outputs.append(torch.where(mb["response_mask"].bool(), logp, torch.zeros_like(logp)).float().cpu())
        return torch.cat(outputs)


    @torch.no_grad()
    def sequence_logprobs(self, batch: Batch) -> torch.Tensor:
        """log pi_ref(response) per row of a full-sequence batch (input_ids, attention_mask, loss_mask [B, T]):
        [B] on the CPU, at temperature 1 (DPO's reference logprobs)."""
        outputs = [torch.empty(0)]
        for mb in split_batch(batch, self.cfg.trainer.micro_batch_size) if batch_size(batch) else []:
            mb = to_device(mb, self.device)
            outputs.append(masked_sequence_logprobs(self.model, mb["input_ids"], mb["attention_mask"], mb["loss_mask"]).float().cpu())
        return torch.cat(outputs)
