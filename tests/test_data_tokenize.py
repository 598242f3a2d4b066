"""Tokenization: exact ids with the tiny chat template, response-only loss masks, truncation."""

import pytest

from rlhf.config import DataConfig
from rlhf.data.errors import DataError
from rlhf.data.examples import PreferenceExample, PromptExample, SFTExample
from rlhf.data.tokenize import check_tokenizer, tokenize_preference, tokenize_prompt, tokenize_sft
from rlhf.tiny import build_tokenizer

# Ids in the tiny tokenizer's vocabulary (checked against the vocabulary below).
EOS, USER, ASSISTANT, SYSTEM = 2, 5, 6, 4
D3, PLUS, D4, EQ, D7, D8 = 10, 19, 11, 23, 14, 15
PROMPT_3_PLUS_4 = [USER, D3, PLUS, D4, EQ, EOS, ASSISTANT]  # "<|user|>3+4=</s><|assistant|>"

USER_3_PLUS_4 = [{"role": "user", "content": "3+4="}]


def test_vocabulary_ids(tiny_tokenizer):
    tokens = ["</s>", "<|user|>", "<|assistant|>", "<|system|>", "3", "+", "4", "=", "7", "8"]
    assert tiny_tokenizer.convert_tokens_to_ids(tokens) == [EOS, USER, ASSISTANT, SYSTEM, D3, PLUS, D4, EQ, D7, D8]
    assert tiny_tokenizer.eos_token_id == EOS


def test_prompt_with_chat_template(tiny_tokenizer):
    out = tokenize_prompt(PromptExample(USER_3_PLUS_4, "3+4="), tiny_tokenizer, DataConfig())
    assert out.prompt_ids == PROMPT_3_PLUS_4
    assert out.raw_prompt == "3+4="


def test_sft_with_chat_template(tiny_tokenizer):
    out = tokenize_sft(SFTExample(USER_3_PLUS_4, "7"), tiny_tokenizer, DataConfig())
    assert out.prompt_ids == PROMPT_3_PLUS_4
    assert out.response_ids == [D7, EOS]
    assert out.input_ids == PROMPT_3_PLUS_4 + [D7, EOS]
    assert out.loss_mask == [0] * 7 + [1, 1]


def test_preference_with_chat_template(tiny_tokenizer):
    out = tokenize_preference(PreferenceExample(USER_3_PLUS_4, "7", "8"), tiny_tokenizer, DataConfig())
    assert out.chosen_input_ids == PROMPT_3_PLUS_4 + [D7, EOS]
    assert out.rejected_input_ids == PROMPT_3_PLUS_4 + [D8, EOS]
    assert out.chosen_loss_mask == out.rejected_loss_mask == [0] * 7 + [1, 1]


def test_prompt_and_response_line_up_with_the_whole_conversation(tiny_tokenizer):
    prompt = [
        {"role": "system", "content": "Add."},
        {"role": "user", "content": "1+1="},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "3+4="},
    ]
    out = tokenize_sft(SFTExample(prompt, "it is 7"), tiny_tokenizer, DataConfig())
    generation_prompt = tiny_tokenizer.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]
    whole = tiny_tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": "it is 7"}])["input_ids"]
    assert out.prompt_ids == generation_prompt
    assert out.input_ids == whole
    assert out.response_ids == tiny_tokenizer.convert_tokens_to_ids(list("it is 7")) + [EOS]
    assert tiny_tokenizer.decode(out.response_ids) == "it is 7</s>"


def test_without_chat_template_is_plain_concatenation(tiny_tokenizer):
    cfg = DataConfig(apply_chat_template=False)
    out = tokenize_sft(SFTExample(USER_3_PLUS_4, "7"), tiny_tokenizer, cfg)
    assert out.prompt_ids == [D3, PLUS, D4, EQ]
    assert out.response_ids == [D7, EOS]
    assert out.loss_mask == [0, 0, 0, 0, 1, 1]
    assert tokenize_prompt(PromptExample(USER_3_PLUS_4, "3+4="), tiny_tokenizer, cfg).prompt_ids == [D3, PLUS, D4, EQ]
    pref = tokenize_preference(PreferenceExample(USER_3_PLUS_4, "7", "8"), tiny_tokenizer, cfg)
    assert (pref.chosen_ids, pref.rejected_ids) == ([D7, EOS], [D8, EOS])


def test_truncation_error(tiny_tokenizer):
    with pytest.raises(DataError, match=r"^prompt has 7 tokens, limit 5"):
        tokenize_prompt(PromptExample(USER_3_PLUS_4, "3+4="), tiny_tokenizer, DataConfig(max_prompt_len=5))
    with pytest.raises(DataError, match=r"^response has 3 tokens, limit 2"):
        tokenize_sft(SFTExample(USER_3_PLUS_4, "77"), tiny_tokenizer, DataConfig(max_response_len=2))
    with pytest.raises(DataError, match=r"^rejected response has 3 tokens, limit 2"):
        tokenize_preference(PreferenceExample(USER_3_PLUS_4, "7", "88"), tiny_tokenizer, DataConfig(max_response_len=2))


def test_truncation_left_keeps_the_prompt_end_and_the_response_start(tiny_tokenizer):
    cfg = DataConfig(truncation="left", max_prompt_len=4, max_response_len=2)
    out = tokenize_sft(SFTExample(USER_3_PLUS_4, "78"), tiny_tokenizer, cfg)
    assert out.prompt_ids == [USER, EQ, EOS, ASSISTANT]  # the turn's header, then the newest tokens
    assert out.response_ids == [D7, D8]  # cut: no EOS
    assert out.loss_mask == [0, 0, 0, 0, 1, 1]


def test_truncation_right_keeps_the_starts(tiny_tokenizer):
    cfg = DataConfig(truncation="right", max_prompt_len=4, max_response_len=2)
    out = tokenize_preference(PreferenceExample(USER_3_PLUS_4, "78", "8"), tiny_tokenizer, cfg)
    assert out.prompt_ids == [USER, D3, PLUS, D4]
    assert out.chosen_ids == [D7, D8]
    assert out.rejected_ids == [D8, EOS]  # short enough: untouched


def _tokenizer_with_template(template):
    tokenizer = build_tokenizer()
    tokenizer.chat_template = template
    return tokenizer


def test_tokens_after_eos_are_dropped():
    # ChatML-style: a newline after each turn's EOS. The response must end at EOS.
    tokenizer = _tokenizer_with_template(
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '</s>' + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )
    out = tokenize_sft(SFTExample(USER_3_PLUS_4, "7"), tokenizer, DataConfig())
    assert out.prompt_ids[-1] == ASSISTANT
    assert out.response_ids == [D7, EOS]


def test_eos_is_appended_when_the_template_writes_none():
    tokenizer = _tokenizer_with_template(
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )
    out = tokenize_sft(SFTExample(USER_3_PLUS_4, "7"), tokenizer, DataConfig())
    assert out.prompt_ids == [USER, D3, PLUS, D4, EQ, tokenizer.convert_tokens_to_ids("\n"), ASSISTANT]
    assert out.response_ids == [D7, tokenizer.convert_tokens_to_ids("\n"), EOS]


def test_template_rendering_the_answer_differently_from_its_generation_prompt():
    # The generation prompt ends in ':' but a finished assistant turn has none: the prompt string is
    # not a prefix of the conversation string, so the response is its content + EOS after the prompt.
    tokenizer = _tokenizer_with_template(
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '</s>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>:' }}{% endif %}"
    )
    out = tokenize_sft(SFTExample(USER_3_PLUS_4, "7"), tokenizer, DataConfig())
    assert out.prompt_ids == PROMPT_3_PLUS_4 + [tokenizer.convert_tokens_to_ids(":")]
    assert out.response_ids == [D7, EOS]


class MergingTokenizer:
    """Greedy longest-match tokenizer whose '<a>7' token spans the prompt/response boundary."""

    vocab = {"<u>": 0, "<a>": 1, "</s>": 2, "<a>7": 3, "7": 4, "3": 5, "+": 6, "4": 7, "=": 8}
    eos_token_id = 2
    chat_template = "<u>...</s><a>...</s>"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join({"user": "<u>", "assistant": "<a>"}[m["role"]] + m["content"] + "</s>" for m in messages)
        return text + ("<a>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            token = max((t for t in self.vocab if text.startswith(t, i)), key=len)
            ids.append(self.vocab[token])
            i += len(token)
        return {"input_ids": ids}

    def decode(self, ids, **kwargs):
        names = {v: k for k, v in self.vocab.items()}
        return "".join(names[i] for i in ids)


def test_tokenizer_merging_across_the_boundary_tokenizes_the_rendered_response():
    tokenizer = MergingTokenizer()
    assert tokenizer("<u>3+4=</s><a>7</s>")["input_ids"] == [0, 5, 6, 7, 8, 2, 3, 2]  # '<a>7' merged
    out = tokenize_sft(SFTExample(USER_3_PLUS_4, "7"), tokenizer, DataConfig())
    assert out.prompt_ids == [0, 5, 6, 7, 8, 2, 1]
    assert out.response_ids == [4, 2]


def test_template_rejecting_a_row_is_a_data_error(tiny_tokenizer):
    with pytest.raises(DataError, match="chat template failed: unknown chat role: tool"):
        tokenize_prompt(PromptExample([{"role": "tool", "content": "x"}], "x"), tiny_tokenizer, DataConfig())


def test_check_tokenizer():
    tokenizer = _tokenizer_with_template(None)
    with pytest.raises(ValueError, match=r"no chat template; set data.chat_template \(chatml, llama2, zephyr or a Jinja "
                       r"file\) or data.apply_chat_template=false"):
        check_tokenizer(tokenizer, DataConfig())
    check_tokenizer(tokenizer, DataConfig(apply_chat_template=False))
