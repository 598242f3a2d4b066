"""Reward scores are read at each row's last real token by the attention mask, on every tiny model family:
the same whatever the padding side, the pad id and the other rows of the batch, and at the EOS when the
response ended with one."""

from __future__ import annotations

import torch

from rlhf.models.forward import sequence_scores
from rlhf.models.loading import load_reward_model, load_tokenizer

TOL = 1e-5
_EXAMPLES = (("3+4=", "7"), ("9+9=", "18"), ("1+2=", "three, I think"), ("0+0=", "0"))


def _conversations(tokenizer) -> list[list[int]]:
    """Templated prompt + answer + EOS, of different lengths (the answer ends with the chat EOS)."""
    rows = []
    for prompt, answer in _EXAMPLES:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        rows.append(ids[: ids.index(tokenizer.eos_token_id, len(ids) - 3) + 1])  # drop what follows the EOS
    return rows


def _pad(rows: list[list[int]], pad_id: int, side: str):
    width = max(map(len, rows))
    ids, mask = [], []
    for r in rows:
        fill = width - len(r)
        ids.append([pad_id] * fill + r if side == "left" else r + [pad_id] * fill)
        mask.append([0] * fill + [1] * len(r) if side == "left" else [1] * len(r) + [0] * fill)
    return torch.tensor(ids), torch.tensor(mask)


def _head_at_last_token(model, ids: list[int]) -> float:
    """By hand: the backbone's last hidden state at the final position, through the score head."""
    with torch.no_grad():
        hidden = model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        return (model.score.weight @ hidden).item()


def test_scores_do_not_depend_on_padding_pad_id_or_batch(family_assets):
    tok = load_tokenizer(family_assets["reward"])
    model = load_reward_model(family_assets["reward"], "float32").eval()
    rows = _conversations(tok)
    with torch.no_grad():
        alone = torch.stack([sequence_scores(model, *_pad([r], tok.pad_token_id, "left")) for r in rows]).squeeze(1)
        for side in ("left", "right"):
            for pad_id in {tok.pad_token_id, tok.eos_token_id, 0, 5}:
                got = sequence_scores(model, *_pad(rows, pad_id, side))
                assert torch.allclose(got, alone, atol=TOL, rtol=0), (side, pad_id, got - alone)
        # A row's score does not depend on its companions (here: two long rows beside it).
        long_rows = [rows[2] * 3, rows[1] * 2]
        mixed = sequence_scores(model, *_pad([rows[0], *long_rows], tok.pad_token_id, "right"))
        assert abs(mixed[0] - alone[0]) < TOL
    assert alone.dtype == torch.float32 and len(set(alone.tolist())) == len(rows)  # the rows really differ


def test_the_eos_position_is_the_one_scored(family_assets):
    """With pad = EOS (llama3, mistral) transformers' own pooling skips the EOS; ours reads it."""
    tok = load_tokenizer(family_assets["reward"])
    model = load_reward_model(family_assets["reward"], "float32").eval()
    with_eos = _conversations(tok)[1]
    without_eos = with_eos[:-1]
    assert with_eos[-1] == tok.eos_token_id
    with torch.no_grad():
        batch = _pad([with_eos, without_eos], tok.pad_token_id, "right")
        scores = sequence_scores(model, *batch)
        assert abs(scores[0] - _head_at_last_token(model, with_eos)) < TOL
        assert abs(scores[1] - _head_at_last_token(model, without_eos)) < TOL
        assert abs(scores[0] - scores[1]) > 1e-3  # the EOS changes the score: it was read


def test_ppo_reward_worker_scores_rollouts_at_their_last_token(family_assets):
    """The PPO reward role on a rollout batch (left-padded prompts, right-padded responses, padded
    with the first EOS id as the rollout engine does without a pad token) scores each row as the
    head at its own last token, EOS included."""
    from rlhf.config import RLHFConfig
    from rlhf.data.padding import build_sequence_batch
    from rlhf.workers.reward import RewardWorker

    cfg = RLHFConfig.model_validate({
        "model": {"policy": family_assets["policy"], "reward": family_assets["reward"],
                  "critic": family_assets["critic"], "dtype": "float32"},
        "data": {"train": family_assets["prompts_train"]},
        "algorithm": {"ppo": {"rollout_batch_size": 6, "mini_batch_size": 6}},
        "trainer": {"micro_batch_size": 3},  # micro-batches of 3 and 1 rows
        "resources": {"device": "cpu"},
    })
    worker = RewardWorker(cfg)
    tok = worker.tokenizer
    prompts, responses = [], []
    for row, (prompt, _) in zip(_conversations(tok), _EXAMPLES):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        p = tok(text, add_special_tokens=False).input_ids
        assert row[: len(p)] == p
        prompts.append(p)
        responses.append(row[len(p):])
    responses[3] = responses[3][:-1]  # one response cut before its EOS (max_new_tokens)
    batch = build_sequence_batch(prompts, responses, tok.eos_token_id)
    scores = worker.scores(batch)
    expected = [_head_at_last_token(worker.model, p + r) for p, r in zip(prompts, responses)]
    assert torch.allclose(scores, torch.tensor(expected), atol=TOL, rtol=0), (scores, expected)
