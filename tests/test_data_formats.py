"""Format adapters: auto-detection, every format, and a clear reason for every malformed row."""

import pytest

from rlhf.config import DataConfig
from rlhf.data.errors import DataError
from rlhf.data.examples import PreferenceExample, PromptExample, SFTExample
from rlhf.data.formats import detect_format, examples


def one(row, fmt, kind):
    made = examples(row, fmt, kind, DataConfig())
    assert len(made) == 1
    return made[0]


def to_prompt_example(row, fmt):
    return one(row, fmt, "prompt")


def to_sft_example(row, fmt):
    return one(row, fmt, "SFT")


def to_preference_example(row, fmt):
    return one(row, fmt, "preference")


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "Add."}

HH_CHOSEN = "\n\nHuman: What is 2+2?\n\nAssistant: Four?\n\nHuman: As a digit.\n\nAssistant: 4"
HH_REJECTED = "\n\nHuman: What is 2+2?\n\nAssistant: Four?\n\nHuman: As a digit.\n\nAssistant: five"

ROWS = {
    "prompt": {"prompt": "3+4="},
    "messages": {"messages": [SYSTEM, user("3+4="), assistant("7")]},
    "prompt_completion": {"prompt": "3+4=", "completion": "7"},
    "prompt_chosen_rejected": {"prompt": "3+4=", "chosen": "7", "rejected": "8"},
    "chat_pairs": {"chosen": [user("3+4="), assistant("7")], "rejected": [user("3+4="), assistant("8")]},
    "hh_rlhf": {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
    "stack_exchange": {"question": "3+4=", "response_j": "7", "response_k": "8", "qid": 1},
}


@pytest.mark.parametrize("fmt", list(ROWS))
def test_detect_format(fmt):
    assert detect_format(ROWS[fmt]) == fmt


def test_detect_ultrafeedback_binarized_row():
    row = {"prompt": "3+4=", "prompt_id": "x", "messages": [user("3+4="), assistant("7")], "score_chosen": 9.0,
           **ROWS["chat_pairs"]}
    assert detect_format(row) == "chat_pairs"


def test_detect_unknown_keys():
    with pytest.raises(DataError, match=r"cannot detect the prompt data format: the row has keys \[input, output\]"):
        detect_format({"input": "a", "output": "b"})


def test_detected_format_must_suit_the_kind():
    with pytest.raises(DataError, match=r"cannot detect the SFT data format \(it looks like format 'prompt', which "
                       r"cannot make SFT examples\)"):
        detect_format({"prompt": "3+4="}, "SFT")


def test_prompt_formats():
    assert to_prompt_example(ROWS["prompt"], "prompt") == PromptExample([user("3+4=")], "3+4=")
    # messages: every turn up to and including the last user turn.
    row = {"messages": [SYSTEM, user("1+1="), assistant("2"), user("3+4="), assistant("7")]}
    example = to_prompt_example(row, "messages")
    assert example.prompt_messages == [SYSTEM, user("1+1="), assistant("2"), user("3+4=")]
    assert example.raw_prompt == "system: Add.\n\nuser: 1+1=\n\nassistant: 2\n\nuser: 3+4="
    # Any other format gives its prompt.
    for fmt in ("prompt_completion", "prompt_chosen_rejected", "chat_pairs", "stack_exchange"):
        assert to_prompt_example(ROWS[fmt], fmt) == PromptExample([user("3+4=")], "3+4="), fmt


def test_sft_formats():
    assert to_sft_example(ROWS["prompt_completion"], "prompt_completion") == SFTExample([user("3+4=")], "7")
    example = to_sft_example(ROWS["messages"], "messages")
    assert example == SFTExample([SYSTEM, user("3+4=")], "7")
    assert example.raw_prompt == "system: Add.\n\nuser: 3+4="


def test_prompt_as_turns():
    row = {"prompt": [SYSTEM, user("3+4=")], "completion": "7"}
    assert to_sft_example(row, "prompt_completion").prompt_messages == [SYSTEM, user("3+4=")]


def test_preference_prompt_chosen_rejected_and_stack_exchange():
    expected = PreferenceExample([user("3+4=")], "7", "8")
    assert to_preference_example(ROWS["prompt_chosen_rejected"], "prompt_chosen_rejected") == expected
    assert to_preference_example(ROWS["stack_exchange"], "stack_exchange") == expected


def test_preference_chat_pairs():
    assert to_preference_example(ROWS["chat_pairs"], "chat_pairs") == PreferenceExample([user("3+4=")], "7", "8")
    multi = {
        "prompt": "3+4=",  # UltraFeedback also carries the prompt string; the turns decide
        "chosen": [SYSTEM, user("1+1="), assistant("2"), user("3+4="), assistant("7")],
        "rejected": [SYSTEM, user("1+1="), assistant("2"), user("3+4="), assistant("8")],
    }
    assert to_preference_example(multi, "chat_pairs").prompt_messages == multi["chosen"][:-1]
    # Response-only turn lists take the prompt from `prompt` (a string or turns).
    response_only = {"prompt": [user("3+4=")], "chosen": [assistant("7")], "rejected": [assistant("8")]}
    assert to_preference_example(response_only, "chat_pairs") == PreferenceExample([user("3+4=")], "7", "8")


def test_preference_hh_rlhf():
    example = to_preference_example(ROWS["hh_rlhf"], "hh_rlhf")
    assert example.prompt_messages == [user("What is 2+2?"), assistant("Four?"), user("As a digit.")]
    assert (example.chosen, example.rejected) == ("4", "five")


BAD_ROWS = [
    # (kind, format, row, reason)
    ("prompt", "prompt", {"text": "3+4="}, "missing field 'prompt' (row has keys: text)"),
    ("prompt", "prompt", {"prompt": 34}, "field 'prompt' must be a string, got int"),
    ("prompt", "prompt", {"prompt": None}, "missing field 'prompt'"),
    ("prompt", "prompt", {"prompt": "  "}, "empty prompt in 'prompt'"),
    ("prompt", "messages", {"messages": "3+4="}, "field 'messages' must be a list of {role, content} turns, got str"),
    ("prompt", "messages", {"messages": []}, "field 'messages' has no turns"),
    ("prompt", "messages", {"messages": [{"role": "user"}]}, "field 'messages': turn 1 has no 'content'"),
    ("prompt", "messages", {"messages": [{"role": "user", "content": 3}]}, "turn 1 'content' must be a string, got int"),
    ("prompt", "messages", {"messages": [SYSTEM]}, "field 'messages' has no user turn"),
    ("sft", "prompt_completion", {"prompt": "3+4="}, "missing field 'completion'"),
    ("sft", "prompt_completion", {"prompt": "3+4=", "completion": 7}, "field 'completion' must be a string, got int"),
    ("sft", "prompt_completion", {"prompt": "3+4=", "completion": ""}, "empty response in 'completion'"),
    ("sft", "messages", {"messages": [user("3+4=")]}, "the last turn must be the assistant response, got role 'user'"),
    ("sft", "messages", {"messages": [user("3+4="), assistant(" ")]}, "empty response in 'messages'"),
    ("sft", "messages", {"messages": [assistant("7")]}, "no prompt turns before the assistant response"),
    ("sft", "prompt", {"prompt": "3+4="}, "format 'prompt' cannot be used for SFT data"),
    ("pref", "prompt_chosen_rejected", {"prompt": "3+4=", "chosen": "7"}, "missing field 'rejected'"),
    ("pref", "prompt_chosen_rejected", {"prompt": "3+4=", "chosen": ["7"], "rejected": "8"}, "field 'chosen' must be a string, got list"),
    ("pref", "prompt_chosen_rejected", {"prompt": "3+4=", "chosen": "7", "rejected": ""}, "empty response in 'rejected'"),
    ("pref", "stack_exchange", {"question": "3+4=", "response_j": "7", "response_k": None}, "missing field 'response_k'"),
    ("pref", "chat_pairs", {"chosen": [user("3+4="), assistant("7")], "rejected": [user("3+5="), assistant("8")]},
     "chosen and rejected conversations do not share the same prompt turns (they differ at turn 1"),
    ("pref", "chat_pairs", {"chosen": [SYSTEM, user("3+4="), assistant("7")], "rejected": [user("3+4="), assistant("8")]},
     "do not share the same prompt turns"),
    ("pref", "chat_pairs", {"chosen": [assistant("7")], "rejected": [assistant("8")]},
     "chosen and rejected hold only the response and there is no 'prompt' field"),
    ("pref", "chat_pairs", {"chosen": [user("3+4="), assistant("")], "rejected": [user("3+4="), assistant("8")]},
     "empty response in 'chosen'"),
    ("pref", "hh_rlhf", {"chosen": "3+4=7", "rejected": HH_REJECTED}, "field 'chosen' is not an HH transcript"),
    ("pref", "hh_rlhf", {"chosen": "\n\nHuman: 3+4=", "rejected": HH_REJECTED},
     "field 'chosen': the last turn must be the assistant response, got role 'user'"),
    ("pref", "hh_rlhf", {"chosen": "\n\nHuman: 3+4=\n\nAssistant: 7", "rejected": HH_REJECTED},
     "chosen and rejected transcripts do not share the same prompt turns"),
    ("pref", "hh_rlhf", {"chosen": "\n\nHuman: 3+4=\n\nAssistant:", "rejected": "\n\nHuman: 3+4=\n\nAssistant: 8"},
     "empty response in 'chosen'"),
    ("pref", "prompt_completion", ROWS["prompt_completion"], "format 'prompt_completion' cannot be used for preference data"),
]
CONVERT = {"prompt": to_prompt_example, "sft": to_sft_example, "pref": to_preference_example}


@pytest.mark.parametrize("kind, fmt, row, reason", BAD_ROWS, ids=[f"{k}-{f}-{i}" for i, (k, f, _, _) in enumerate(BAD_ROWS)])
def test_malformed_rows_name_the_reason(kind, fmt, row, reason):
    with pytest.raises(DataError) as info:
        CONVERT[kind](row, fmt)
    assert reason in str(info.value)
    assert info.value.source is None and info.value.row is None  # the loader adds file and row
