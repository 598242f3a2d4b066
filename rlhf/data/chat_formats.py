"""Adapters of the prompt and SFT formats: a raw row -> its prompt turns or `SFTExample`s.

Each reads the fields of one published dataset shape (see the table in `rlhf.data.formats`).
A ``*_sft`` adapter returns a list (an oasst tree gives one example per conversation path).
"""

from __future__ import annotations

from rlhf.config import DataConfig
from rlhf.data.errors import DataError
from rlhf.data.examples import (
    Messages,
    SFTExample,
    field,
    prompt_field,
    prompt_turns,
    split_response,
    text,
    turns,
    user_prompt,
)


def _sft(prompt: Messages, response: str, name: str) -> list[SFTExample]:
    if not prompt:
        raise DataError(None, None, f"field {name!r} has no prompt turns before the assistant response")
    return [SFTExample(prompt, response)]


# ---- prompt / prompt_completion / messages ----------------------------------------------------

def prompt_prompt(row: dict) -> Messages:
    return prompt_field(row)


def prompt_completion_sft(row: dict, cfg: DataConfig) -> list[SFTExample]:
    return [SFTExample(prompt_field(row), text(row, "completion", "response"))]


def messages_prompt(row: dict) -> Messages:
    return prompt_turns(turns(field(row, "messages"), "messages"), "messages")


def messages_sft(row: dict, cfg: DataConfig) -> list[SFTExample]:
    return _sft(*split_response(turns(field(row, "messages"), "messages"), "messages"), "messages")


# ---- OpenOrca, Alpaca / dolphin ---------------------------------------------------------------

def openorca_sft(row: dict, cfg: DataConfig) -> list[SFTExample]:
    prompt = user_prompt(text(row, "question", "question"), row.get("system_prompt"))
    return [SFTExample(prompt, text(row, "response", "response"))]


def alpaca_prompt(row: dict) -> Messages:
    """``instruction``, then a blank line and ``input`` when it is non-empty, as one user turn."""
    instruction = text(row, "instruction", "instruction")
    extra = row.get("input")
    return user_prompt(f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction)


def alpaca_sft(row: dict, cfg: DataConfig) -> list[SFTExample]:
    return [SFTExample(alpaca_prompt(row), text(row, "output", "response"))]


# ---- ShareGPT ---------------------------------------------------------------------------------

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


def _sharegpt_turns(row: dict) -> Messages:
    return turns(field(row, "conversations"), "conversations", role_key="from", content_key="value", roles=SHAREGPT_ROLES)


def sharegpt_prompt(row: dict) -> Messages:
    return prompt_turns(_sharegpt_turns(row), "conversations")


def sharegpt_sft(row: dict, cfg: DataConfig) -> list[SFTExample]:
    """The conversation up to its last assistant turn (a trailing unanswered human turn is dropped)."""
    conversation = _sharegpt_turns(row)
    last = max((i for i, t in enumerate(conversation) if t["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(None, None, "field 'conversations' has no gpt (assistant) turn")
    return _sft(*split_response(conversation[: last + 1], "conversations"), "conversations")


# ---- oasst message trees ----------------------------------------------------------------------

_OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def _oasst_turn(node: dict) -> dict:
    if not isinstance(node, dict) or node.get("role") not in _OASST_ROLES or not isinstance(node.get("text"), str):
        raise DataError(None, None, "oasst tree: every message needs a 'role' (prompter or assistant) and a 'text'")
    return {"role": _OASST_ROLES[node["role"]], "content": node["text"]}


def _best_reply(replies: list) -> dict | None:
    """The best-ranked reply (lowest ``rank``; unranked ones after ranked, in file order)."""
    ranked = sorted(enumerate(replies), key=lambda ir: (ir[1].get("rank") is None, ir[1].get("rank") or 0, ir[0]))
    return ranked[0][1] if ranked else None


def _oasst_paths(prompter: dict, path: Messages) -> list[Messages]:
    """Conversations through ``prompter``: its best-ranked answer, then every follow-up question."""
    answer = _best_reply(prompter.get("replies") or [])
    if answer is None:
        return []
    here = path + [_oasst_turn(prompter), _oasst_turn(answer)]
    deeper = [p for follow_up in answer.get("replies") or [] for p in _oasst_paths(follow_up, here)]
    return deeper or [here]


def _oasst_conversations(row: dict) -> list[Messages]:
    root = field(row, "prompt")
    if not isinstance(root, dict):
        raise DataError(None, None, f"field 'prompt' must be an oasst message tree (an object), got {type(root).__name__}")
    conversations = _oasst_paths(root, [])
    if not conversations:
        raise DataError(None, None, "oasst tree has no assistant reply")
    return conversations


def oasst_prompt(row: dict) -> Messages:
    return [_oasst_turn(field(row, "prompt"))]


def oasst_sft(row: dict, cfg: DataConfig) -> list[SFTExample]:
    """One example per leaf path of the tree, taking the best-ranked assistant reply at every branch."""
    return [SFTExample(*split_response(c, "prompt")) for c in _oasst_conversations(row)]
