"""Collating tokenized examples into padded tensor batches.

- Prompts (rollouts): left-padded ``input_ids``/``attention_mask`` [B, P], so every prompt ends
  at the last column where generation starts, plus the unpadded ``prompt_ids`` lists (what a
  vLLM engine takes) and the ``raw_prompts`` strings (what a rule reward takes).
- SFT: right-padded ``input_ids``/``attention_mask``/``loss_mask`` [B, T]. ``loss_mask`` is 1
  on response tokens (EOS included) and is aligned with ``input_ids``, not shifted: with
  ``logits[:, t]`` predicting ``input_ids[:, t + 1]``, the loss uses ``loss_mask[:, 1:]``.
- Scored (reward-model regression): the SFT tensors of prompt + response and ``targets`` [B], the
  float32 scores.
- Preference: separate ``chosen_*`` and ``rejected_*`` tensors (``input_ids``,
  ``attention_mask``, ``loss_mask``), right-padded to one shared length T, so that
  ``torch.cat([chosen_x, rejected_x])`` is the concatenated [2B, T] batch (chosen rows first)
  when the policy should see both in a single forward pass. `rollout_pairs` builds the same
  layout from rows of a rollout batch (iterative DPO), with the exact sampled token ids.
- Unpaired (KTO): the SFT tensors plus a bool ``desirable`` [B]; the mismatched (prompt,
  completion) rows that KTO's reference point is estimated from are SFT rows of
  `mismatched_examples`, paired by `kl_partners`.

``attention_mask`` is long (0/1), ``loss_mask`` float (0.0/1.0), ``input_ids`` long; padding
uses ``pad_id`` (any valid id: the masks, not the ids, decide what counts).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from rlhf.data.padding import pad_sequences
from rlhf.data.tokenize import TokenizedPreference, TokenizedPrompt, TokenizedScored, TokenizedSFT, TokenizedUnpaired

log = logging.getLogger(__name__)

# How many shifts `kl_partners` tries before settling for the one with the fewest self-pairings.
_MAX_KL_SHIFTS = 64


def collate_prompts(examples: Sequence[TokenizedPrompt], pad_id: int) -> dict:
    """{input_ids, attention_mask: [B, P] left-padded; prompt_ids: list[list[int]]; raw_prompts: list[str]}."""
    ids = [e.prompt_ids for e in examples]
    return {
        "input_ids": pad_sequences(ids, pad_id, "left"),
        "attention_mask": pad_sequences([[1] * len(s) for s in ids], 0, "left"),
        "prompt_ids": [list(s) for s in ids],
        "raw_prompts": [e.raw_prompt for e in examples],
    }


def _right_padded(sequences: list[list[int]], masks: list[list[int]], pad_id: int, length: int) -> tuple[torch.Tensor, ...]:
    return (
        pad_sequences(sequences, pad_id, "right", length),
        pad_sequences([[1] * len(s) for s in sequences], 0, "right", length),
        pad_sequences(masks, 0, "right", length, dtype=torch.float32),
    )


def collate_sft(examples: Sequence[TokenizedSFT], pad_id: int) -> dict[str, torch.Tensor]:
    """{input_ids, attention_mask, loss_mask}: [B, T], right-padded; loss_mask 1 on response tokens."""
    sequences = [e.input_ids for e in examples]
    length = max(len(s) for s in sequences)
    input_ids, attention_mask, loss_mask = _right_padded(sequences, [e.loss_mask for e in examples], pad_id, length)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def collate_scored(examples: Sequence[TokenizedScored], pad_id: int) -> dict[str, torch.Tensor]:
    """`collate_sft`'s {input_ids, attention_mask, loss_mask} [B, T] and targets [B] (float32)."""
    return {**collate_sft(examples, pad_id), "targets": torch.tensor([e.score for e in examples], dtype=torch.float32)}


def collate_preference(examples: Sequence[TokenizedPreference], pad_id: int) -> dict[str, torch.Tensor]:
    """chosen_/rejected_ {input_ids, attention_mask, loss_mask}: each [B, T] with one shared T, right-padded."""
    chosen = [e.chosen_input_ids for e in examples]
    rejected = [e.rejected_input_ids for e in examples]
    length = max(len(s) for s in chosen + rejected)
    batch = {}
    for name, sequences, masks in (
        ("chosen", chosen, [e.chosen_loss_mask for e in examples]),
        ("rejected", rejected, [e.rejected_loss_mask for e in examples]),
    ):
        input_ids, attention_mask, loss_mask = _right_padded(sequences, masks, pad_id, length)
        batch.update({f"{name}_input_ids": input_ids, f"{name}_attention_mask": attention_mask, f"{name}_loss_mask": loss_mask})
    return batch


def pairs_as_rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A preference batch as one [2B, T] batch of rows {input_ids, attention_mask, loss_mask}: the B
    chosen rows first, then the B rejected rows (pair i is rows i and B + i)."""
    return {key: torch.cat([batch[f"chosen_{key}"], batch[f"rejected_{key}"]]) for key in ("input_ids", "attention_mask", "loss_mask")}


def rollout_pairs(batch: dict, chosen: torch.Tensor, rejected: torch.Tensor, pad_id: int) -> dict[str, torch.Tensor]:
    """`collate_preference`'s layout from a rollout batch (`padding.py`: input_ids/attention_mask [N, P+R], prompt
    left-padded, response right-padded; response_mask [N, R]): pair i is row chosen[i] against row rejected[i].

    Each sequence is its row's exact token ids, never re-tokenized text: the prompt tokens its attention_mask marks,
    then the response tokens its response_mask marks (EOS included when sampled); loss_mask 1 on the response.
    Both rows of a pair must hold the same prompt.
    """
    width = batch["response_mask"].shape[1]
    prompt_width = batch["input_ids"].shape[1] - width

    def prompt(row: int) -> list[int]:
        return batch["input_ids"][row, :prompt_width][batch["attention_mask"][row, :prompt_width].bool()].tolist()

    def response(row: int) -> list[int]:
        return batch["input_ids"][row, prompt_width:][batch["response_mask"][row].bool()].tolist()

    examples = []
    for c, r in zip(chosen.tolist(), rejected.tolist()):
        if prompt(c) != prompt(r):
            raise ValueError(f"rollout_pairs: rows {c} and {r} answer different prompts")
        examples.append(TokenizedPreference(prompt_ids=prompt(c), chosen_ids=response(c), rejected_ids=response(r)))
    return collate_preference(examples, pad_id)


def collate_unpaired(examples: Sequence[TokenizedUnpaired], pad_id: int) -> dict[str, torch.Tensor]:
    """{input_ids, attention_mask, loss_mask: [B, T] as `collate_sft`; desirable: [B] bool}."""
    return {**collate_sft(examples, pad_id), "desirable": torch.tensor([e.desirable for e in examples], dtype=torch.bool)}


def kl_partners(prompts: Sequence[Sequence[int]]) -> list[int]:
    """KTO's mismatched pairs: index j = partners[i] whose completion goes with example i's prompt.

    partners[i] = (i + k) mod N, with k the smallest shift >= 1 under which no example's prompt
    equals its partner's (tried up to 64 shifts; else the one with the fewest equal prompts, with a
    warning). A shift is a permutation, so every completion appears in exactly one mismatched pair,
    and a data set of split preference pairs (desirable and undesirable of one prompt adjacent)
    gets k = 2, not TRL's 1 (which would pair each undesirable answer's prompt with its own
    desirable answer). TRL rotates by one within each batch; here the pairing is fixed per data set
    (by dataset order) so that the reference's logprobs of the mismatched rows can be precomputed
    once, like the completions', while the sampler still shuffles the batches.
    """
    n = len(prompts)
    best, best_equal = 1, None
    for k in range(1, min(n, _MAX_KL_SHIFTS + 1)):
        equal = sum(prompts[i] == prompts[(i + k) % n] for i in range(n))
        if best_equal is None or equal < best_equal:
            best, best_equal = k, equal
        if equal == 0:
            break
    if best_equal:
        log.warning("KTO: %d of %d mismatched (prompt, completion) pairs share their prompt (shift %d): "
                    "too few distinct prompts for the KL estimate", best_equal, n, best)
    return [(i + best) % n for i in range(n)]


def mismatched_examples(examples: Sequence[TokenizedSFT], partners: Sequence[TokenizedSFT]) -> list[TokenizedSFT]:
    """Example i's prompt followed by partners[i]'s completion (KTO's KL rows; collate with `collate_sft`)."""
    return [TokenizedSFT(e.prompt_ids, p.response_ids) for e, p in zip(examples, partners, strict=True)]
