"""Token-budget micro-batches: the packing rule, rank balancing and order restoration (`rlhf.data.micro_batches`),
and trimming each batch layout's padding columns (`rlhf.data.batch_layouts`), on hand-made batches."""

from __future__ import annotations

import pytest
import torch

from rlhf.data.batch_layouts import UNTRIMMED, find_layout, trim_columns, untrim_output
from rlhf.data.batch_ops import index_batch
from rlhf.data.collate import collate_preference, collate_sft
from rlhf.data.micro_batches import pack_by_tokens, padded_tokens, restore_order, split_to_count
from rlhf.data.padding import build_sequence_batch
from rlhf.data.tokenize import TokenizedPreference, TokenizedSFT
from rlhf.models.forward import response_logprobs
from rlhf.models.loading import load_causal_lm


def one_part(*lengths: int) -> list[list[int]]:
    return [[n] for n in lengths]


def test_padded_tokens_is_rows_times_the_sum_of_each_parts_widest_row():
    lengths = [[3, 1], [1, 5], [2, 2]]
    assert padded_tokens([0, 1], lengths) == 2 * (3 + 5)
    assert padded_tokens([0, 1, 2], lengths, sequences_per_row=2) == 3 * 2 * 8
    assert padded_tokens([], lengths) == 0


def test_rows_are_grouped_longest_first_under_the_budget():
    # sorted: 9(3) 8(1) 5(4) 4(0) 2(2) 1(5); budget 16: [9] alone (2x9=18 > 16), [8, 5] = 16, [4, 2, 1] = 12
    assert pack_by_tokens(one_part(4, 8, 2, 9, 5, 1), max_tokens=16, max_rows=8) == [[3], [1, 4], [0, 2, 5]]


def test_the_row_cap_and_overlong_rows():
    # every row fits the budget twice over, but at most 2 rows per micro-batch
    assert pack_by_tokens(one_part(1, 1, 1, 1, 1), max_tokens=100, max_rows=2) == [[0, 1], [2, 3], [4]]
    # a row longer than the budget goes alone; so does every row when the budget is tiny
    assert pack_by_tokens(one_part(50, 3, 3), max_tokens=10, max_rows=4) == [[0], [1, 2]]
    assert pack_by_tokens(one_part(5, 6), max_tokens=1, max_rows=4) == [[1], [0]]
    with pytest.raises(ValueError):
        pack_by_tokens(one_part(1), max_tokens=0, max_rows=1)


def test_two_part_rows_cost_the_widest_prompt_plus_the_widest_response():
    # totals 6, 6, 5: rows 0 and 1 alone cost 2 x (5 + 5) = 20 > 12 although each is 6 long
    lengths = [[5, 1], [1, 5], [3, 2]]
    assert pack_by_tokens(lengths, max_tokens=16, max_rows=4) == [[0], [1, 2]]  # [1, 2]: 2 x (3 + 5) = 16
    assert pack_by_tokens(lengths, max_tokens=15, max_rows=4) == [[0], [1], [2]]

def test_pairs_count_both_sequences():
    # a pair of width 4 is 8 tokens: two pairs fit 16, three do not
    assert pack_by_tokens(one_part(4, 4, 4), max_tokens=16, max_rows=8, sequences_per_row=2) == [[0, 1], [2]]


def test_padding_drops_against_fixed_rows():
    lengths = one_part(100, 3, 90, 4, 5, 2, 95, 3)
    fixed = [[0, 1, 2, 3], [4, 5, 6, 7]]
    packed = pack_by_tokens(lengths, max_tokens=300, max_rows=4)
    assert packed == [[0, 6, 2], [4, 3, 1, 7], [5]]
    assert sum(padded_tokens(g, lengths) for g in fixed) == 4 * 100 + 4 * 95
    assert sum(padded_tokens(g, lengths) for g in packed) == 3 * 100 + 4 * 5 + 1 * 2
    assert sorted(i for g in packed for i in g) == list(range(8))


def test_split_to_count_halves_the_costliest_group_until_there_are_enough():
    lengths = one_part(9, 8, 5, 4, 2, 1)
    groups = [[0, 1], [2, 3, 4, 5]]  # costs 18 and 20
    assert split_to_count(groups, lengths, 2) == groups
    assert split_to_count(groups, lengths, 3) == [[0, 1], [2, 3], [4, 5]]
    assert split_to_count(groups, lengths, 4) == [[0], [1], [2, 3], [4, 5]]  # 18 > 10 > 4
    assert split_to_count(groups, lengths, 6) == [[0], [1], [2], [3], [4], [5]]
    with pytest.raises(ValueError):
        split_to_count(groups, lengths, 7)


def test_restore_order_puts_each_output_row_back():
    groups = [[2, 0], [3], [1]]
    outputs = [torch.tensor([[20.0], [0.0]]), torch.tensor([[30.0]]), torch.tensor([[10.0]])]
    assert restore_order(outputs, groups).tolist() == [[0.0], [10.0], [20.0], [30.0]]


# -- layouts --------------------------------------------------------------------------------------

PROMPTS = [[11, 12, 13], [21], [31, 32]]
RESPONSES = [[14], [22, 23, 24, 25], [33, 34]]
PAD = 0


def rollout_batch() -> dict:
    batch = build_sequence_batch(PROMPTS, RESPONSES, PAD)  # P = 3, R = 4
    batch["advantages"] = torch.arange(12, dtype=torch.float32).reshape(3, 4) * batch["response_mask"]
    batch["scores"] = torch.tensor([1.0, 2.0, 3.0])
    return batch


def test_a_rollout_is_trimmed_at_the_prompts_left_and_the_responses_right():
    batch = rollout_batch()
    layout, extents = find_layout(batch)
    assert layout.name == "rollout" and extents.tolist() == [[3, 1], [1, 4], [2, 2]]
    rows = [1, 2]  # prompts 1 and 2 tokens, responses 4 and 2: P' = 2, R' = 4
    trimmed = trim_columns(layout, index_batch(batch, rows), extents[rows])
    assert trimmed["input_ids"].tolist() == [[0, 21, 22, 23, 24, 25], [31, 32, 33, 34, 0, 0]]
    assert trimmed["attention_mask"].tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    assert trimmed["advantages"].tolist() == batch["advantages"][rows].tolist()
    rows = [0, 2]  # R' = 2: the response tensors lose their last two columns
    trimmed = trim_columns(layout, index_batch(batch, rows), extents[rows])
    assert trimmed["input_ids"].tolist() == [[11, 12, 13, 14, 0], [0, 31, 32, 33, 34]]
    assert trimmed["response_mask"].tolist() == [[1, 0], [1, 1]]
    assert trimmed["advantages"].tolist() == [[0.0, 0.0], [8.0, 9.0]]
    assert trimmed["scores"].tolist() == [1.0, 3.0]
    # per-token outputs come back R wide, zero on the trimmed columns
    assert untrim_output(layout, trimmed["advantages"], batch).tolist() == [[0.0, 0.0, 0.0, 0.0], [8.0, 9.0, 0.0, 0.0]]


def test_trimming_a_rollout_leaves_the_logprobs_unchanged(tiny_assets):
    model = load_causal_lm(tiny_assets["policy"], "float32").eval()
    batch = rollout_batch()
    layout, extents = find_layout(batch)
    R = batch["response_mask"].shape[1]
    with torch.no_grad():
        whole = response_logprobs(model, batch["input_ids"], batch["attention_mask"], R) * batch["response_mask"]
        groups = [[0, 2], [1]]
        parts = []
        for rows in groups:
            mb = trim_columns(layout, index_batch(batch, rows), extents[rows])
            logp = response_logprobs(model, mb["input_ids"], mb["attention_mask"], mb["response_mask"].shape[1])
            parts.append(untrim_output(layout, logp * mb["response_mask"], batch))
    assert parts[0].shape[1] == R and torch.allclose(restore_order(parts, groups), whole, atol=1e-5)


def test_sft_and_pair_batches_are_trimmed_on_the_right():
    sft = collate_sft([TokenizedSFT([1, 2], [3]), TokenizedSFT([1], [2, 3, 4, 5])], PAD)
    layout, extents = find_layout(sft)
    assert layout.name == "sequences" and extents.tolist() == [[3], [5]]
    trimmed = trim_columns(layout, index_batch(sft, [0]), extents[[0]])
    assert trimmed["input_ids"].tolist() == [[1, 2, 3]] and trimmed["loss_mask"].tolist() == [[0.0, 0.0, 1.0]]

    pairs = collate_preference(
        [TokenizedPreference([1], [2], [3, 4, 5]), TokenizedPreference([1], [2, 3, 4, 5, 6], [7])], PAD
    )
    pairs["ref_chosen_logps"] = torch.tensor([-1.0, -2.0])
    layout, extents = find_layout(pairs)
    assert layout.name == "pairs" and layout.sequences_per_row == 2 and extents.tolist() == [[4], [6]]
    trimmed = trim_columns(layout, index_batch(pairs, [0]), extents[[0]])
    assert trimmed["chosen_input_ids"].tolist() == [[1, 2, 0, 0]]
    assert trimmed["rejected_input_ids"].tolist() == [[1, 3, 4, 5]]
    assert trimmed["ref_chosen_logps"].tolist() == [-1.0]


def test_a_batch_in_no_known_padding_keeps_every_column():
    # right-padded rows where a rollout (left-padded prompts) is expected: not trimmed, grouped by count
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 0], [5, 0, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]),
        "response_mask": torch.tensor([[0.0, 0.0], [1.0, 0.0]]),
    }
    layout, extents = find_layout(batch)
    assert layout is UNTRIMMED and extents.tolist() == [[4], [4]]
    assert trim_columns(layout, batch, extents) is batch
    assert pack_by_tokens(extents.tolist(), max_tokens=8, max_rows=4) == [[0, 1]]
