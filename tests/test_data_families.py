"""Exact training tokens on every tiny model family (rlhf.tiny): the text round-trips, each response
holds exactly one stop token (the rollout engines' stop set), left truncation keeps BOS and the
system turn, and bf16 logprobs at T=0.7 match fp64."""

import pytest
import torch

from rlhf.algorithms.logprobs import logprobs_from_logits
from rlhf.config import DataConfig, load_config
from rlhf.data.examples import PromptExample, SFTExample
from rlhf.data.stop_tokens import end_of_turn_id, stop_token_ids
from rlhf.data.tokenize import tokenize_prompt, tokenize_sft
from rlhf.models.loading import load_tokenizer

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CHAT = [SYSTEM, {"role": "user", "content": "3+4="}, {"role": "assistant", "content": "7"},
        {"role": "user", "content": "What is the sum? 9+9="}]
ANSWER = "18"


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def round_trips(tokenizer, text):
    return decode(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.parametrize("template", ["tokenizer", "chatml", "zephyr", "llama2"])
def test_training_tokens_are_the_rendered_conversation_with_one_stop_token(family_assets, template):
    tokenizer = load_tokenizer(family_assets["policy"], template)
    out = tokenize_sft(SFTExample(CHAT, ANSWER), tokenizer, DataConfig(chat_template=template))
    stops = stop_token_ids(tokenizer, family_assets["policy"])
    assert [t for t in out.response_ids if t in stops] == out.response_ids[-1:]  # exactly one, at the end

    rendered = tokenizer.apply_chat_template(CHAT + [{"role": "assistant", "content": ANSWER}], tokenize=False)
    answer_at = rendered.rindex(ANSWER)
    terminator = decode(tokenizer, out.response_ids[-1:])
    if out.response_ids[-1] == end_of_turn_id(tokenizer):  # the template's own: the text up to it
        expected = rendered[: rendered.index(terminator, answer_at) + len(terminator)]
    else:  # the template writes no stop token (ChatML on a tokenizer without <|im_end|>): EOS after the turn
        assert end_of_turn_id(tokenizer) is None and out.response_ids[-1] == tokenizer.eos_token_id
        expected = rendered + terminator
    if round_trips(tokenizer, rendered):
        assert decode(tokenizer, out.input_ids) == expected
    else:  # the char tokenizer has no '|': compare with its own rendering of the text
        assert decode(tokenizer, out.input_ids) == decode(tokenizer, tokenizer(expected, add_special_tokens=False)["input_ids"])
    assert decode(tokenizer, out.prompt_ids) == tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) \
        or not round_trips(tokenizer, rendered)


def test_the_rollout_engine_stops_on_the_same_set(family_assets, tmp_path):
    from rlhf.workers.rollout import RolloutEngine

    cfg = load_config(None, [f"model.policy={family_assets['policy']}", f"data.train={family_assets['prompts_train']}",
                             "algorithm.name=sft", "rollout.backend=hf", "resources.device=cpu", "model.dtype=float32"])
    engine = RolloutEngine(cfg, family_assets["policy"])
    tokenizer = load_tokenizer(family_assets["policy"])
    assert engine.eos_ids == stop_token_ids(tokenizer, family_assets["policy"])
    assert end_of_turn_id(tokenizer) in engine.eos_ids and tokenizer.eos_token_id in engine.eos_ids


@pytest.mark.parametrize("family, base_eos", [("llama3", "<|end_of_text|>"), ("qwen2", "<|endoftext|>")])
def test_a_base_eos_that_is_not_the_end_of_turn(family, base_eos, tmp_path_factory):
    # The base model's EOS with the instruct template: the turn still ends with the template's
    # <|eot_id|> / <|im_end|> alone (not followed by '\n' or the base EOS), and rollouts stop on it.
    from rlhf.tiny import build_tiny_assets

    assets = build_tiny_assets(tmp_path_factory.mktemp(f"base_{family}") / "assets", seed=0, family=family)
    tokenizer = load_tokenizer(assets["policy"])
    tokenizer.eos_token = base_eos
    eot = end_of_turn_id(tokenizer)
    assert eot != tokenizer.eos_token_id and eot in stop_token_ids(tokenizer, assets["policy"])
    out = tokenize_sft(SFTExample(CHAT, ANSWER), tokenizer, DataConfig())
    assert out.response_ids[-1] == eot and tokenizer.eos_token_id not in out.response_ids
    assert decode(tokenizer, out.response_ids).endswith(ANSWER + tokenizer.convert_ids_to_tokens(eot))


LONG = [SYSTEM] + [t for a in range(1, 6) for t in ({"role": "user", "content": f"{a}+{a}="},
                                                    {"role": "assistant", "content": str(2 * a)})] + [CHAT[-1]]


def test_left_truncation_drops_the_oldest_turns_and_keeps_bos_and_system(family_assets):
    tokenizer = load_tokenizer(family_assets["policy"])

    def prompt(messages, limit=100_000):
        return tokenize_prompt(PromptExample(messages, ""), tokenizer, DataConfig(truncation="left", max_prompt_len=limit)).prompt_ids

    full = prompt(LONG)
    last_turn = prompt([SYSTEM, CHAT[-1]])
    two_turns = prompt([SYSTEM] + LONG[-3:])
    # Whole turns go first, the oldest first: the limit of the last two exchanges keeps exactly them.
    assert prompt(LONG, len(two_turns)) == two_turns
    assert prompt(LONG, len(last_turn)) == last_turn
    # Then tokens: BOS (when the template writes one) and the system turn stay, the generation prompt too.
    cut = prompt(LONG, len(last_turn) - 3)
    assert len(cut) == len(last_turn) - 3
    assert cut[0] == full[0]  # BOS where the template writes one (llama3, mistral)
    assert "You are a helpful assistant." in decode(tokenizer, cut)
    assert cut[-4:] == full[-4:]


def test_bf16_logprobs_at_temperature_match_fp64_on_the_family_model(family_assets):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(family_assets["policy"], dtype=torch.bfloat16).eval()
    tokenizer = load_tokenizer(family_assets["policy"])
    ids = torch.tensor([tokenize_sft(SFTExample(CHAT, ANSWER), tokenizer, DataConfig()).input_ids])
    with torch.no_grad():
        logits = model(ids).logits[:, :-1] * 20  # sharper than a random init's, like a trained model's
    labels = ids[:, 1:]
    expected = torch.log_softmax(logits.double() / 0.7, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert logits.dtype == torch.bfloat16
    assert (logprobs_from_logits(logits, labels, temperature=0.7).double() - expected).abs().max() < 1e-3
