"""Collation: left-padded prompts, right-padded SFT with a response-only loss mask, the preference layout."""

import torch

from rlhf.config import DataConfig
from rlhf.data.collate import collate_preference, collate_prompts, collate_sft
from rlhf.data.examples import SFTExample
from rlhf.data.tokenize import TokenizedPreference, TokenizedPrompt, TokenizedSFT, tokenize_sft

PAD = 0


def test_collate_prompts_left_pads():
    batch = collate_prompts([TokenizedPrompt([7, 8, 9], "a"), TokenizedPrompt([5], "b")], PAD)
    assert batch["input_ids"].tolist() == [[7, 8, 9], [PAD, PAD, 5]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["prompt_ids"] == [[7, 8, 9], [5]]
    assert batch["raw_prompts"] == ["a", "b"]
    assert batch["input_ids"].dtype == torch.long


def test_collate_sft_right_pads_with_a_response_mask():
    batch = collate_sft([TokenizedSFT([1, 2], [3, 4]), TokenizedSFT([5, 6, 7], [8])], PAD)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    batch = collate_sft([TokenizedSFT([1, 2], [3, 4, 2]), TokenizedSFT([5], [8])], PAD)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 2], [5, 8, PAD, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert batch["loss_mask"].dtype == torch.float32 and batch["attention_mask"].dtype == torch.long


def test_collate_sft_masks_exactly_the_templated_response(tiny_tokenizer):
    examples = [tokenize_sft(SFTExample([{"role": "user", "content": p}], c), tiny_tokenizer, DataConfig())
                for p, c in (("3+4=", "7"), ("9+9=", "18"))]
    batch = collate_sft(examples, tiny_tokenizer.pad_token_id)
    for row, mask in zip(batch["input_ids"], batch["loss_mask"]):
        response = row[mask.bool()].tolist()
        assert tiny_tokenizer.decode(response) in ("7</s>", "18</s>")


def test_collate_preference_shares_one_length():
    examples = [TokenizedPreference([1, 2], [3, 2], [4, 4, 4, 2]), TokenizedPreference([5], [6, 2], [2])]
    batch = collate_preference(examples, PAD)
    assert set(batch) == {f"{side}_{key}" for side in ("chosen", "rejected") for key in ("input_ids", "attention_mask", "loss_mask")}
    assert batch["chosen_input_ids"].tolist() == [[1, 2, 3, 2, PAD, PAD], [5, 6, 2, PAD, PAD, PAD]]
    assert batch["rejected_input_ids"].tolist() == [[1, 2, 4, 4, 4, 2], [5, 2, PAD, PAD, PAD, PAD]]
    assert batch["chosen_loss_mask"].tolist() == [[0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]]
    assert batch["rejected_loss_mask"].tolist() == [[0, 0, 1, 1, 1, 1], [0, 1, 0, 0, 0, 0]]
    assert batch["rejected_attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]
    # The concatenated layout for one forward pass: chosen rows, then rejected rows.
    both = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    assert both.shape == (4, 6)
