"""The policy trainer role: logprobs, PPO, SFT, DPO and KTO steps, and publishing its weights to the rollout engines.

PPO batches follow `rlhf.data.padding`: input_ids / attention_mask [B, P+R], response_mask [B, R].
Their logprobs use rollout.temperature, the temperature the engines sampled with, so that old
logprobs, the PPO ratio and the engines' sampling logprobs all describe the same distribution.

SFT, DPO and KTO batches follow `rlhf.data.collate`: right-padded full sequences [B, T] with a
loss_mask on the response tokens (DPO: chosen_* and rejected_* of each pair); their logprobs
are at temperature 1, the model's own distribution.
"""

from __future__ import annotations

import torch

from rlhf.algorithms.dpo import dpo_loss, preference_logps
from rlhf.algorithms.kto import kto_counts, kto_loss, kto_stats
from rlhf.algorithms.logprobs import logprobs_from_logits, sequence_logprobs
from rlhf.algorithms.loss_agg import agg_count, row_share
from rlhf.algorithms.policy_loss import PolicyObjective
from rlhf.algorithms.reward import pairwise_accuracy
from rlhf.algorithms.sft import sft_loss
from rlhf.config import RLHFConfig
from rlhf.data.collate import pairs_as_rows
from rlhf.models.forward import masked_sequence_logprobs, next_token_logits, response_logprobs
from rlhf.models.loading import load_causal_lm
from rlhf.models.saving import export_merged_state_dict, export_units, is_peft_model
from rlhf.workers.trainer_base import Batch, MicroBatchLoss, TrainerBase


class PolicyTrainer(TrainerBase):
    """One data-parallel rank of the policy (a causal LM, optionally LoRA) in a DeepSpeed engine."""

    role = "policy"
    stat_prefix = "policy"

    def __init__(self, cfg: RLHFConfig):
        self._transport = None
        super().__init__(cfg, cfg.model.policy)

    def _load_model(self, path: str):
        model_cfg = self.cfg.model
        return load_causal_lm(path, model_cfg.dtype, model_cfg.lora, model_cfg.gradient_checkpointing)

    # -- scoring -----------------------------------------------------------------------------------
    def logprobs(self, batch: Batch) -> torch.Tensor:
        """log pi(y_t | x, y_<t) at rollout.temperature for every response token: [B, R], 0 outside the mask."""
        return self._masked_logprobs(batch)

    def reference_logprobs(self, batch: Batch) -> torch.Tensor:
        """The reference's logprobs when the reference is this policy's base model (LoRA adapter disabled)."""
        self._require_reference_from_base("reference_logprobs")
        with self.module.disable_adapter():
            return self._masked_logprobs(batch)

    def sequence_logprobs(self, batch: Batch) -> torch.Tensor:
        """log pi(response) per row of a full-sequence batch (input_ids, attention_mask, loss_mask [B, T]): [B].

        For DPO pairs, `rlhf.data.collate.pairs_as_rows` turns a preference batch into such rows.
        """
        return self._forward_no_grad(batch, _sequence_logprobs)

    def reference_sequence_logprobs(self, batch: Batch) -> torch.Tensor:
        """`sequence_logprobs` under the reference when it is this policy's base model (LoRA adapter disabled)."""
        self._require_reference_from_base("reference_sequence_logprobs")
        with self.module.disable_adapter():
            return self.sequence_logprobs(batch)

    def _require_reference_from_base(self, method: str) -> None:
        if not (self.cfg.model.reference_from_base and is_peft_model(self.module)):
            raise RuntimeError(f"policy: {method} needs model.lora.enabled and model.reference_from_base")

    def _masked_logprobs(self, batch: Batch) -> torch.Tensor:
        temperature = self.cfg.rollout.temperature

        def forward(module, mb):
            R = mb["response_mask"].shape[1]
            logp = response_logprobs(module, mb["input_ids"], mb["attention_mask"], R, temperature)
            return torch.where(mb["response_mask"].bool(), logp, torch.zeros_like(logp))

        return self._forward_no_grad(batch, forward)

    # -- training --------------------------------------------------------------------------------
    def ppo_step(self, minibatch: Batch) -> dict[str, float]:
        """One optimizer step of the policy objective (`rlhf.algorithms.policy_loss.PolicyObjective`) on this rank's shard.

        minibatch: input_ids, attention_mask, response_mask, old_logprobs [B, R], advantages [B, R];
        ref_logprobs [B, R] when algorithm.ppo.kl_loss_coef > 0; rollout_logprobs [B, R] when
        algorithm.ppo.rollout_is_cap is set. Losses and metrics are aggregated over the whole step
        with trainer.loss_agg_mode. Returns policy/loss (the policy-gradient term), policy/clipfrac,
        policy/dual_clipfrac, policy/approx_kl, policy/entropy, (policy/kl_loss), (policy/rollout_is_ratio_mean,
        _max, policy/rollout_is_clipfrac), policy/grad_norm, policy/lr.
        """
        ppo = self.cfg.algorithm.ppo
        mode = self.cfg.trainer.loss_agg_mode
        temperature = self.cfg.rollout.temperature
        objective = PolicyObjective(
            loss_type=ppo.policy_loss_type, clip_eps=ppo.clip_eps, clip_eps_low=ppo.clip_eps_low,
            clip_eps_high=ppo.clip_eps_high, clip_ratio_c=ppo.clip_ratio_c, entropy_coef=ppo.entropy_coef,
            kl_loss_coef=ppo.kl_loss_coef, kl_loss_estimator=ppo.kl_loss_estimator,
            rollout_is_cap=ppo.rollout_is_cap, loss_agg_mode=mode,
        )
        def count_fn(mb):
            return {"response": agg_count(mb["response_mask"], mode)}

        def loss_fn(mb, counts):
            mask = mb["response_mask"]
            logp, entropy = response_logprobs(
                self.engine, mb["input_ids"], mb["attention_mask"], mask.shape[1], temperature, with_entropy=True
            )
            loss, shares, maxima = objective(
                logp, mb["old_logprobs"], mb["advantages"], mask, entropy=entropy,
                ref_logp=mb.get("ref_logprobs"), rollout_logp=mb.get("rollout_logprobs"), count=counts["response"],
            )
            return MicroBatchLoss(loss, _prefixed(shares), _prefixed(maxima))

        return self._train_on(minibatch, count_fn, loss_fn)

    def sft_step(self, minibatch: Batch) -> dict[str, float]:
        """One optimizer step of supervised fine-tuning on this rank's shard.

        minibatch: input_ids, attention_mask, loss_mask [B, T] (`rlhf.data.collate.collate_sft`).
        loss = sft_loss, the NLL of the response tokens aggregated over the whole step with
        trainer.loss_agg_mode. Returns loss, policy/grad_norm, policy/lr.
        """
        mode = self.cfg.trainer.loss_agg_mode

        def count_fn(mb):
            return {"labels": agg_count(mb["loss_mask"][:, 1:], mode)}

        def loss_fn(mb, counts):
            logits = next_token_logits(self.engine, mb["input_ids"], mb["attention_mask"])
            loss = sft_loss(logits, mb["input_ids"][:, 1:], mb["loss_mask"][:, 1:], mode, counts["labels"])
            return MicroBatchLoss(loss, {"loss": loss.detach()})

        return self._train_on(minibatch, count_fn, loss_fn)

    def dpo_step(self, minibatch: Batch) -> dict[str, float]:
        """One optimizer step of the DPO loss (algorithm.dpo) on this rank's shard of preference pairs.

        minibatch: chosen_/rejected_ {input_ids, attention_mask, loss_mask} [B, T]
        (`rlhf.data.collate.collate_preference`) and the reference's ref_chosen_logps,
        ref_rejected_logps [B] (summed, or length-averaged for IPO: `preference_logps`); optionally pair_mask [B],
        0 on slots that are no pair (iterative DPO's prompts without a preference): they add nothing to the loss,
        the metrics or the pair count, so the step is the mean over its real pairs. Chosen and rejected
        go through the model in one forward pass ([2B, T]). loss = mean over the step's pairs of dpo_loss
        + nll_coef * sft_loss(chosen) (RPO; only when nll_coef > 0; aggregated over the step's chosen
        tokens with trainer.loss_agg_mode).
        Returns TRL's names: loss, rewards/chosen, rewards/rejected, rewards/accuracies,
        rewards/margins, logps/chosen, logps/rejected (and nll_loss), plus policy/grad_norm, policy/lr.
        """
        dpo = self.cfg.algorithm.dpo
        mode = self.cfg.trainer.loss_agg_mode

        def count_fn(mb):
            chosen_mask = _real_pairs(mb, mb["chosen_loss_mask"])[:, 1:]
            return {"pairs": len(chosen_mask), "chosen": agg_count(chosen_mask, mode)}

        def loss_fn(mb, counts):
            rows = pairs_as_rows(mb)
            n = len(mb["ref_chosen_logps"])
            logits = next_token_logits(self.engine, rows["input_ids"], rows["attention_mask"])
            labels, mask = rows["input_ids"][:, 1:], rows["loss_mask"][:, 1:]
            logps = preference_logps(sequence_logprobs(logprobs_from_logits(logits, labels), mask), mask, dpo.loss_type)
            chosen, rejected = _real_pairs(mb, logps[:n]), _real_pairs(mb, logps[n:])
            ref_chosen, ref_rejected = _real_pairs(mb, mb["ref_chosen_logps"]), _real_pairs(mb, mb["ref_rejected_logps"])
            losses, chosen_rewards, rejected_rewards = dpo_loss(
                chosen, rejected, ref_chosen.to(logps.dtype), ref_rejected.to(logps.dtype),
                beta=dpo.beta, loss_type=dpo.loss_type, label_smoothing=dpo.label_smoothing,
            )
            pairs = counts["pairs"]
            loss = row_share(losses, pairs)
            stats = {
                "rewards/chosen": row_share(chosen_rewards, pairs),
                "rewards/rejected": row_share(rejected_rewards, pairs),
                "rewards/accuracies": pairwise_accuracy(chosen_rewards, rejected_rewards, pairs),
                "rewards/margins": row_share(chosen_rewards - rejected_rewards, pairs),
                "logps/chosen": row_share(chosen.detach(), pairs),
                "logps/rejected": row_share(rejected.detach(), pairs),
            }
            if dpo.nll_coef > 0:
                chosen_rows = (_real_pairs(mb, x[:n]) for x in (logits, labels, mask))
                nll = sft_loss(*chosen_rows, mode, counts["chosen"])
                loss = loss + dpo.nll_coef * nll
                stats["nll_loss"] = nll.detach()
            stats["loss"] = loss.detach()
            return MicroBatchLoss(loss, stats)

        return self._train_on(minibatch, count_fn, loss_fn)

    def kto_step(self, minibatch: Batch, kl: float) -> dict[str, float]:
        """One optimizer step of the KTO loss (algorithm.kto) on this rank's shard of unpaired examples.

        minibatch: input_ids, attention_mask, loss_mask [B, T], desirable [B] (`rlhf.data.collate.collate_unpaired`)
        and the reference's summed ref_logps [B]. ``kl`` is the step's reference point z_ref, computed by the
        driver over the whole step's mismatched rows (`rlhf.algorithms.kto.kto_reference_point`), so it does not
        depend on how the step is split. loss = sum of kto_loss over the step's examples / their number.
        Returns TRL's names: loss, rewards/chosen, rewards/rejected, rewards/margins, logps/chosen,
        logps/rejected (desirable examples are "chosen"), plus policy/grad_norm, policy/lr.
        """
        kto = self.cfg.algorithm.kto

        def count_fn(mb):
            return kto_counts(mb["desirable"])

        def loss_fn(mb, counts):
            logps = masked_sequence_logprobs(self.engine, mb["input_ids"], mb["attention_mask"], mb["loss_mask"])
            losses, rewards = kto_loss(
                logps, mb["ref_logps"].to(logps.dtype), mb["desirable"], kl, beta=kto.beta,
                desirable_weight=kto.desirable_weight, undesirable_weight=kto.undesirable_weight,
            )
            return MicroBatchLoss(row_share(losses, counts["rows"]), kto_stats(losses, rewards, logps, mb["desirable"], counts))

        return self._train_on(minibatch, count_fn, loss_fn)

    # -- weight sync -----------------------------------------------------------------------------
    def export_weights(self) -> dict[str, torch.Tensor] | None:
        """Rank 0: {HF name: CPU copy}, LoRA merged in; other ranks None. All ranks call it (ZeRO-3 gathers).

        For checks and saving; syncs stream buckets on the trainer's device (`publish_weights`).
        """
        self._require_engine()
        if not self.zero3 and self.rank != 0:
            return None
        weights = export_merged_state_dict(self.module, gather=self._gather, collect=self.rank == 0)
        return weights if self.rank == 0 else None

    def sync_device_uuid(self) -> str | None:
        """This rank's physical GPU (None on the CPU); the driver compares it with the engines' GPUs."""
        from rlhf.weight_sync import gpu_uuid

        return gpu_uuid()

    def resolve_sync_transport(self, engines_share_trainer_gpu: bool) -> str:
        """rollout.sync_transport with 'auto' resolved for this trainer's device (see `rlhf.weight_sync.resolve_transport`)."""
        from rlhf.weight_sync import resolve_transport

        return resolve_transport(self.cfg.rollout.sync_transport, self.device.type, engines_share_trainer_gpu)

    def init_weight_sync(self, transport: str, **init_kwargs) -> None:
        """Create the rollout.sync_transport (resolved by the driver); rank 0 joins its group when it has one.

        Broadcast: master_address, master_port, world_size, timeout_s; this rank 0 is group rank 0.
        """
        from rlhf.weight_sync import make_transport

        self._transport = make_transport(transport, self.device.type)
        if init_kwargs and self.rank == 0:
            self._transport.init(rank=0, role="policy rank 0", **init_kwargs)

    def publish_weights(self, version: int):
        """Send the weights as ``version`` through the transport, one bucket at a time; all ranks call.

        Every rank walks the same buckets (under ZeRO-3 each bucket's parameters are gathered
        together, then released); rank 0 sends. Returns rank 0's SyncHandle, None elsewhere.
        """
        from rlhf.weight_sync import BucketedWeights

        self._require_engine()
        if self._transport is None:
            raise RuntimeError("policy: init_weight_sync(...) must run before publish_weights")
        if not self.zero3 and self.rank != 0:
            return None
        weights = BucketedWeights(
            list(export_units(self.module)),
            int(self.cfg.rollout.sync_bucket_mb * 2**20),
            gather=self._gather,
            model_params=list(self.module.parameters()),
        )
        return self._transport.send(weights, version, rank=self.rank)


def _sequence_logprobs(module, mb: Batch) -> torch.Tensor:
    return masked_sequence_logprobs(module, mb["input_ids"], mb["attention_mask"], mb["loss_mask"])


def _real_pairs(mb: Batch, per_pair: torch.Tensor) -> torch.Tensor:
    """The rows of ``per_pair`` [B, ...] whose pair_mask is set (all of them when the batch has no pair_mask)."""
    return per_pair if "pair_mask" not in mb else per_pair[mb["pair_mask"].bool()]


def _prefixed(stats: dict) -> dict:
    return {f"policy/{k}": v for k, v in stats.items()}
