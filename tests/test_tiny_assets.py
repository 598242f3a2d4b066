import json
import time
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    GenerationConfig,
)

from rlhf.tasks.arithmetic import answer, parse_prompt, score
from rlhf.tiny import CHARACTERS, SPECIAL_TOKENS, build_tiny_assets, main


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


# --- tokenizer ---------------------------------------------------------------------------


def test_tokenizer_one_id_per_character_and_special_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    assert len(tok) == len(SPECIAL_TOKENS) + len(CHARACTERS)
    ids = tok("<|user|>3+4=</s>").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<|user|>", "3", "+", "4", "=", "</s>"]
    assert ids[0] == tok.convert_tokens_to_ids("<|user|>")
    assert ids[-1] == tok.eos_token_id
    # No BOS (or EOS) is added automatically.
    assert tok("3+4=").input_ids == [tok.convert_tokens_to_ids(c) for c in "3+4="]


def test_tokenizer_round_trip(tiny_tokenizer):
    tok = tiny_tokenizer
    text = "<|system|>Be brief.</s><|user|>What is 3+4?\n(answer: 7)</s><|assistant|>7</s>"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "Be brief.What is 3+4?\n(answer: 7)7"
    assert tok.decode(tok("a b  c").input_ids) == "a b  c"  # spaces kept, none inserted
    assert tok.convert_ids_to_tokens(tok("~").input_ids) == ["<unk>"]


def test_tokenizer_special_ids_and_left_padding(tiny_tokenizer):
    tok = tiny_tokenizer
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.padding_side == "left"
    batch = tok(["1+1=", "1+1= 2"], padding=True)
    assert batch.input_ids[0][:2] == [tok.pad_token_id] * 2
    assert batch.attention_mask[0] == [0, 0, 1, 1, 1, 1]


def test_chat_template(tiny_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "3+4="},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "1+1="},
    ]
    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>Be brief.</s><|user|>3+4=</s><|assistant|>7</s><|user|>1+1=</s><|assistant|>"
    no_prompt = tiny_tokenizer.apply_chat_template(messages[1:2], tokenize=False)
    assert no_prompt == "<|user|>3+4=</s>"
    assert parse_prompt(text) == (1, 1)
    with pytest.raises(Exception, match="unknown chat role"):
        tiny_tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


# --- models ------------------------------------------------------------------------------


def test_policy_loads_and_runs(tiny_assets):
    tok = AutoTokenizer.from_pretrained(tiny_assets["policy"])
    model = AutoModelForCausalLM.from_pretrained(tiny_assets["policy"])
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert cfg.vocab_size == len(tok)
    assert cfg.hidden_size // cfg.num_attention_heads == 64  # vLLM's CPU attention needs this
    assert not cfg.tie_word_embeddings
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 2)
    assert model.dtype == torch.float32
    assert GenerationConfig.from_pretrained(tiny_assets["policy"]).eos_token_id == tok.eos_token_id

    batch = tok(["1+1=", "9+9= x"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 6, len(tok))
    assert torch.isfinite(logits).all()


def test_reward_and_critic_load_and_run(tiny_assets):
    tok = AutoTokenizer.from_pretrained(tiny_assets["reward"])
    batch = tok(["1+1=2", "9+9=18"], padding=True, return_tensors="pt")

    reward = AutoModelForSequenceClassification.from_pretrained(tiny_assets["reward"])
    assert type(reward).__name__ == "LlamaForSequenceClassification"
    assert reward.config.num_labels == 1 and reward.config.pad_token_id == tok.pad_token_id
    with torch.no_grad():
        assert reward(**batch).logits.shape == (2, 1)

    critic = AutoModelForTokenClassification.from_pretrained(tiny_assets["critic"])
    assert type(critic).__name__ == "LlamaForTokenClassification"
    assert critic.config.num_labels == 1
    with torch.no_grad():
        assert critic(**batch).logits.shape == (2, 6, 1)


# --- data --------------------------------------------------------------------------------


def test_data_splits(tiny_assets):
    rows = {name: _read_jsonl(tiny_assets[name]) for name in (
        "prompts_train", "prompts_eval", "prompts_train_messages", "prompts_eval_messages",
        "sft_train", "sft_eval", "pref_train", "pref_eval",
    )}
    assert {k: len(v) for k, v in rows.items()} == {
        "prompts_train": 80, "prompts_eval": 20,
        "prompts_train_messages": 80, "prompts_eval_messages": 20,
        "sft_train": 80, "sft_eval": 20,
        "pref_train": 320, "pref_eval": 40,
    }
    train = {r["prompt"] for r in rows["prompts_train"]}
    held_out = {r["prompt"] for r in rows["prompts_eval"]}
    assert len(train) == 80 and len(held_out) == 20
    assert not train & held_out
    assert train | held_out == {f"{a}+{b}=" for a in range(10) for b in range(10)}

    # Every held-out split uses the same 20 prompts; every train split the other 80.
    for split, expected in (("train", train), ("eval", held_out)):
        assert {r["prompt"] for r in rows[f"sft_{split}"]} == expected
        assert {r["prompt"] for r in rows[f"pref_{split}"]} == expected
        assert {r["messages"][0]["content"] for r in rows[f"prompts_{split}_messages"]} == expected
        assert all(r["messages"][0]["role"] == "user" for r in rows[f"prompts_{split}_messages"])

    for r in rows["sft_train"] + rows["sft_eval"]:
        assert r["completion"] == answer(*parse_prompt(r["prompt"]))
    rejected_kinds = set()
    for r in rows["pref_train"] + rows["pref_eval"]:
        assert score(r["prompt"], r["chosen"]) == 1.0
        assert score(r["prompt"], r["rejected"]) < 1.0
        rejected_kinds.add("number" if r["rejected"].isdigit() else "malformed")
        assert r["rejected"].isdigit() or any(c.isalpha() for c in r["rejected"])
    assert rejected_kinds == {"number", "malformed"}


# --- building ----------------------------------------------------------------------------


def test_manifest_and_cached_rebuild(tiny_assets):
    root = Path(tiny_assets["root"])
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["seed"] == 0
    for name, rel in manifest["paths"].items():
        assert (root / rel).exists() and tiny_assets[name] == str(root / rel)
    start = time.perf_counter()
    assert build_tiny_assets(root, seed=0) == tiny_assets  # a complete build is reused
    assert time.perf_counter() - start < 0.5
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_build_is_deterministic(tmp_path):
    a = build_tiny_assets(tmp_path / "a", seed=0)
    b = build_tiny_assets(tmp_path / "b", seed=0)
    c = build_tiny_assets(tmp_path / "c", seed=1)
    for name in ("policy", "reward", "critic", "tokenizer", "data"):
        files_a = sorted(p.relative_to(a[name]) for p in Path(a[name]).rglob("*"))
        assert files_a == sorted(p.relative_to(b[name]) for p in Path(b[name]).rglob("*"))
        for rel in files_a:
            assert (Path(a[name]) / rel).read_bytes() == (Path(b[name]) / rel).read_bytes(), rel
    weights = "model.safetensors"
    assert (Path(a["policy"]) / weights).read_bytes() != (Path(c["policy"]) / weights).read_bytes()
    assert Path(a["prompts_eval"]).read_bytes() != Path(c["prompts_eval"]).read_bytes()


def test_rebuild_replaces_and_refuses_foreign_dirs(tmp_path, capsys):
    out = tmp_path / "assets"
    build_tiny_assets(out, seed=0)
    policy_weights = out / "policy" / "model.safetensors"
    first = policy_weights.read_bytes()
    build_tiny_assets(out, seed=1)  # another seed replaces the build
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert policy_weights.read_bytes() != first

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not assets")
    with pytest.raises(FileExistsError):
        build_tiny_assets(foreign)
    assert main([str(foreign)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main([str(foreign), "--force"]) == 0
    assert not (foreign / "notes.txt").exists() and (foreign / "manifest.json").exists()
