"""Supervised fine-tuning on Ray: the policy learns the responses of prompt_completion or messages data.

The loop is `offline.OfflineDriver`'s; a step is one `PolicyTrainer.sft_step` (token-mean NLL of
the response tokens) on train_batch_size examples split across the policy ranks. Metrics per
step: loss, throughput/tokens_per_s (response tokens), time/step, policy/grad_norm, policy/lr;
eval/loss is the token-mean NLL over all of data.eval. The final model is <output_dir>/policy.
"""

from __future__ import annotations

import time

from rlhf.data.collate import collate_sft
from rlhf.data.datasets import load_sft_dataset
from rlhf.drivers.offline import OfflineDriver, load_splits
from rlhf.workers.group import WorkerGroup


class SFTDriver(OfflineDriver):
    name = "SFT"
    progress_keys = ("loss", "eval/loss")
    summary_keys = ("loss",)

    def load_data(self):
        return load_splits(self.cfg, self.tokenizer, load_sft_dataset)

    def train_step(self, indices: list[int]) -> dict[str, float]:
        start = time.time()
        batch = collate_sft([self.train_data[i] for i in indices], self.pad_id)
        stats = self.trainer.scatter("sft_step", batch)[0]  # already averaged over micro-batches and ranks
        seconds = time.time() - start
        tokens = batch["loss_mask"][:, 1:].sum().item()
        return {**stats, "time/step": seconds, "throughput/tokens_per_s": tokens / seconds}

    def evaluate(self) -> dict[str, float]:
        logprob_sum, tokens = 0.0, 0.0
        for examples in self.eval_batches():
            batch = collate_sft(examples, self.pad_id)
            logprob_sum += WorkerGroup.gather_cat(self.trainer.scatter("sequence_logprobs", batch)).sum().item()
            tokens += batch["loss_mask"][:, 1:].sum().item()
        return {"eval/loss": -logprob_sum / tokens}
