"""Every tiny model family (rlhf.tiny.FAMILIES) has the traits of the checkpoints it imitates, loads with
transformers, builds deterministically, and generates with the vLLM CPU engine."""

from __future__ import annotations

import json
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

from rlhf.tasks.arithmetic import parse_prompt
from rlhf.tiny import FAMILIES, build_tiny_assets, main

# What each family must look like: architecture, tied embeddings, a pad token of its own,
# number of EOS ids in generation_config, and the first token of a templated prompt (None: no BOS).
TRAITS = {
    "char": dict(arch="Llama", tied=False, pad=True, n_eos=1, first=None),
    "llama3": dict(arch="Llama", tied=True, pad=False, n_eos=2, first="<|begin_of_text|>"),
    "qwen2": dict(arch="Qwen2", tied=True, pad=True, n_eos=2, first="<|im_start|>"),
    "mistral": dict(arch="Mistral", tied=False, pad=False, n_eos=1, first="<s>"),
}


def test_families_are_the_four_known_ones():
    assert FAMILIES == ("char", "llama3", "qwen2", "mistral") == tuple(TRAITS)
    with pytest.raises(ValueError, match="unknown tiny model family 'gpt2'"):
        build_tiny_assets("/nonexistent", family="gpt2")


def test_family_models_have_their_traits_and_run(family_assets):
    traits = TRAITS[family_assets["family"]]
    tok = AutoTokenizer.from_pretrained(family_assets["policy"])
    policy = AutoModelForCausalLM.from_pretrained(family_assets["policy"]).eval()
    cfg = policy.config
    assert type(policy).__name__ == f"{traits['arch']}ForCausalLM"
    assert cfg.hidden_size // cfg.num_attention_heads == 64  # vLLM's CPU attention needs this
    assert cfg.vocab_size == len(tok)
    assert (policy.lm_head.weight is policy.model.embed_tokens.weight) == traits["tied"] == cfg.tie_word_embeddings
    assert (tok.pad_token is not None) == traits["pad"]
    if tok.pad_token is not None:
        assert tok.pad_token_id != tok.eos_token_id
    eos = GenerationConfig.from_pretrained(family_assets["policy"]).eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    assert len(eos) == traits["n_eos"] and tok.eos_token_id in eos
    if traits["arch"] == "Qwen2":
        assert policy.model.layers[0].self_attn.q_proj.bias is not None
    if traits["arch"] == "Mistral":
        assert cfg.sliding_window is not None

    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in ("3+4=", "9+9=")]
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "left"
    batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = policy.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        reward = AutoModelForSequenceClassification.from_pretrained(family_assets["reward"]).eval()
        critic = AutoModelForTokenClassification.from_pretrained(family_assets["critic"]).eval()
        assert type(reward).__name__ == f"{traits['arch']}ForSequenceClassification"
        assert type(critic).__name__ == f"{traits['arch']}ForTokenClassification"
        reward.config.pad_token_id = tok.pad_token_id
        assert reward(**batch).logits.shape == (2, 1)
        assert critic(**batch).logits.shape == (*batch["input_ids"].shape, 1)
    assert out.shape[1] > batch["input_ids"].shape[1]


def test_family_chat_template_and_tokenizer(family_assets):
    """The generation prompt's ids are a prefix of the conversation's, which ends the answer with EOS."""
    traits = TRAITS[family_assets["family"]]
    tok = AutoTokenizer.from_pretrained(family_assets["tokenizer"])
    rows = [json.loads(line) for line in Path(family_assets["sft_train"]).read_text().splitlines()]
    for row in rows[:10]:
        user = [{"role": "user", "content": row["prompt"]}]
        prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        conversation = tok.apply_chat_template(user + [{"role": "assistant", "content": row["completion"]}], tokenize=False)
        prompt_ids = tok(prompt, add_special_tokens=False).input_ids
        ids = tok(conversation, add_special_tokens=False).input_ids
        assert ids[: len(prompt_ids)] == prompt_ids
        response = ids[len(prompt_ids):]
        end = response.index(tok.eos_token_id)
        assert tok.decode(response[:end]) == row["completion"]
        assert parse_prompt(prompt) == parse_prompt(row["prompt"])
        first = tok.convert_ids_to_tokens(prompt_ids[0])
        assert first == traits["first"] if traits["first"] else first != tok.bos_token
    text = "What is 12+7? Answer: nineteen (19)."
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_family_build_is_deterministic_and_from_the_cli(family_assets, tmp_path):
    family = family_assets["family"]
    if family == "char":
        pytest.skip("the char build's determinism is checked in test_tiny_assets")
    out = tmp_path / "again"
    assert main([str(out), "--family", family]) == 0
    assert json.loads((out / "manifest.json").read_text())["family"] == family
    built = Path(family_assets["root"])
    files = sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for rel in files:
        assert (built / rel).read_bytes() == (out / rel).read_bytes(), rel
    # Another family asked for the same directory rebuilds it rather than reusing a wrong build.
    build_tiny_assets(out, family="char")
    assert "family" not in json.loads((out / "manifest.json").read_text())
