"""Exact training tokens on SentencePiece-style tokenizers: the prompt/response seam, one stop
token per response, plain prompts without a stray EOS, left truncation that keeps BOS."""

from spm_tokenizer import INST_TEMPLATE, sentencepiece_tokenizer

from rlhf.config import DataConfig
from rlhf.data.examples import PromptExample, SFTExample
from rlhf.data.stop_tokens import end_of_turn_id, stop_token_ids
from rlhf.data.tokenize import tokenize_prompt, tokenize_sft

QUESTION = [{"role": "user", "content": "What is 3+4?"}]


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_merged_seam_keeps_the_rendered_text():
    tokenizer = sentencepiece_tokenizer()
    rendered = tokenizer.apply_chat_template(QUESTION + [{"role": "assistant", "content": "Sure!"}], tokenize=False)
    assert rendered == "<s>[INST] What is 3+4? [/INST]Sure!</s>"
    assert "▁[/INST]Sure!" in tokenizer.tokenize(rendered)  # the prompt's last piece merges with the answer
    assert tokenizer.tokenize("Sure!</s>")[0] == "▁"  # the answer alone gets an invented space

    out = tokenize_sft(SFTExample(QUESTION, "Sure!"), tokenizer, DataConfig())
    assert decode(tokenizer, out.prompt_ids) == "<s>[INST] What is 3+4? [/INST]"
    assert decode(tokenizer, out.input_ids) == rendered
    assert tokenizer.convert_ids_to_tokens(out.response_ids) == ["Sure!", "</s>"]


def test_without_template_the_prompt_has_bos_but_no_eos():
    tokenizer = sentencepiece_tokenizer(append_eos=True)
    assert tokenizer("3+4")["input_ids"][-1] == tokenizer.eos_token_id  # this tokenizer appends EOS
    cfg = DataConfig(apply_chat_template=False)
    prompt = tokenize_prompt(PromptExample(QUESTION, "What is 3+4?"), tokenizer, cfg).prompt_ids
    assert prompt[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in prompt
    out = tokenize_sft(SFTExample(QUESTION, " Sure!"), tokenizer, cfg)
    assert out.prompt_ids == prompt
    # the text as this tokenizer itself tokenizes it ('▁' prepended, BOS and EOS added)
    assert decode(tokenizer, out.input_ids) == decode(tokenizer, tokenizer("What is 3+4? Sure!")["input_ids"])
    assert decode(tokenizer, out.input_ids) == "<s> What is 3+4? Sure!</s>"
    assert out.response_ids.count(tokenizer.eos_token_id) == 1


def test_stop_set_adds_the_templates_end_of_turn_token():
    # A base tokenizer whose EOS is not the token the chat template ends a turn with (Llama-3 base
    # with the instruct template; ChatML on Qwen's base tokenizer).
    tokenizer = sentencepiece_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|eot|>"]})
    tokenizer.chat_template = INST_TEMPLATE.replace("eos_token", "'<|eot|>'")
    eot = tokenizer.convert_tokens_to_ids("<|eot|>")
    assert end_of_turn_id(tokenizer) == eot
    assert stop_token_ids(tokenizer) == [tokenizer.eos_token_id, eot]
    assert stop_token_ids(tokenizer, chat_template=False) == [tokenizer.eos_token_id]
    out = tokenize_sft(SFTExample(QUESTION, "Sure!"), tokenizer, DataConfig())
    assert out.response_ids[-1] == eot and tokenizer.eos_token_id not in out.response_ids


def test_nothing_after_the_end_of_turn_token_is_trained_on():
    # The template writes a non-space token after its end of turn: cut there, one stop token.
    tokenizer = sentencepiece_tokenizer()
    tokenizer.chat_template = INST_TEMPLATE.replace("eos_token }}", "eos_token + 'Hi' + eos_token }}")
    out = tokenize_sft(SFTExample(QUESTION, "Sure!"), tokenizer, DataConfig())
    assert tokenizer.convert_ids_to_tokens(out.response_ids) == ["Sure!", "</s>"]


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 3+4?"},
    {"role": "assistant", "content": "Sure! It is 7."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Sure!"},
    {"role": "user", "content": "What is 3+4?"},
]


def test_left_truncation_drops_the_oldest_turns_and_keeps_bos_and_system():
    tokenizer = sentencepiece_tokenizer()
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ '[SYS] ' + m['content'] + ' [/SYS]' }}"
        "{% elif m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
    )

    def prompt_text(messages, limit):
        cfg = DataConfig(truncation="left", max_prompt_len=limit)
        return decode(tokenizer, tokenize_prompt(PromptExample(messages, ""), tokenizer, cfg).prompt_ids)

    full = prompt_text(CHAT, 1000)
    assert full == "<s>[SYS] Be brief. [/SYS][INST] What is 3+4? [/INST]Sure! It is 7.</s>[INST] Hi [/INST]Sure!</s>" \
                   "[INST] What is 3+4? [/INST]"
    one_pair_dropped = "<s>[SYS] Be brief. [/SYS][INST] Hi [/INST]Sure!</s>[INST] What is 3+4? [/INST]"
    last_turn_only = "<s>[SYS] Be brief. [/SYS][INST] What is 3+4? [/INST]"
    length = {text: len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in (one_pair_dropped, last_turn_only)}
    assert prompt_text(CHAT, length[one_pair_dropped]) == one_pair_dropped
    assert prompt_text(CHAT, length[one_pair_dropped] - 1) == last_turn_only
    # Still too long with the last turn alone: BOS and the system turn stay, the oldest tokens go.
    cut = tokenize_prompt(PromptExample(CHAT, ""), tokenizer, DataConfig(truncation="left", max_prompt_len=length[last_turn_only] - 2))
    assert len(cut.prompt_ids) == length[last_turn_only] - 2
    assert decode(tokenizer, cut.prompt_ids).startswith("<s>[SYS] Be brief. [/SYS]")
    assert decode(tokenizer, cut.prompt_ids).endswith("3+4? [/INST]")
