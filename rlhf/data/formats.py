"""Format adapters: raw dataset rows -> normalised prompt, SFT and preference examples.

Every example holds the prompt as chat messages (``[{"role", "content"}, ...]``); a plain
string prompt becomes one user turn. Formats (``DataConfig.format``; ``"auto"`` detects
them from the keys of a row, see `detect_format`):

=========================  ===================================================================
format                     row
=========================  ===================================================================
prompt                     ``prompt``: str
messages                   ``messages``: list of turns. For prompts: the turns up to and
                           including the last user turn. For SFT: the last turn is the
                           assistant response, the turns before it the prompt.
prompt_completion          ``prompt``, ``completion``: str
prompt_chosen_rejected     ``prompt``, ``chosen``, ``rejected``: str
chat_pairs                 ``chosen``, ``rejected``: turn lists sharing the prompt turns and
                           ending in the assistant response (UltraFeedback-binarized). When
                           both hold only the response, ``prompt`` (str or turns) is the prompt.
hh_rlhf                    ``chosen``, ``rejected``: Anthropic HH transcripts
                           ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``; the prompt is the shared
                           turns before the final Assistant response.
stack_exchange             ``question``; ``response_j`` (chosen), ``response_k`` (rejected)
=========================  ===================================================================

Prompt datasets accept every format (the responses are ignored); SFT datasets accept
``prompt_completion`` and ``messages``; preference datasets the last four. A malformed row
raises `DataError` with the reason only; the loader adds the file and row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlhf.data.errors import DataError

PROMPT_FORMATS = ("prompt", "messages", "prompt_completion", "prompt_chosen_rejected", "chat_pairs", "hh_rlhf", "stack_exchange")
SFT_FORMATS = ("prompt_completion", "messages")
PREFERENCE_FORMATS = ("prompt_chosen_rejected", "chat_pairs", "hh_rlhf", "stack_exchange")

Messages = list[dict]


def plain_prompt(messages: Messages) -> str:
    """The prompt as text without a chat template.

    One user turn is its content verbatim (so ``{"prompt": "3+4="}`` gives ``"3+4="``); several
    turns are ``"role: content"`` blocks joined by blank lines.
    """
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


@dataclass(frozen=True)
class PromptExample:
    """A prompt for rollouts; ``raw_prompt`` is the untemplated text given to rule rewards."""

    prompt_messages: Messages
    raw_prompt: str


@dataclass(frozen=True)
class SFTExample:
    """A prompt and the target completion (the assistant response)."""

    prompt_messages: Messages
    completion: str

    @property
    def raw_prompt(self) -> str:
        return plain_prompt(self.prompt_messages)


@dataclass(frozen=True)
class PreferenceExample:
    """A prompt with a preferred (``chosen``) and a dispreferred (``rejected``) response."""

    prompt_messages: Messages
    chosen: str
    rejected: str

    @property
    def raw_prompt(self) -> str:
        return plain_prompt(self.prompt_messages)


def detect_format(row: dict) -> str:
    """The format of ``row`` from its keys (first match wins, in this order).

    question+response_j+response_k -> stack_exchange; chosen+rejected -> chat_pairs when
    ``chosen`` is a list, else prompt_chosen_rejected when there is a ``prompt``, else hh_rlhf;
    messages -> messages; prompt+completion -> prompt_completion; prompt -> prompt.
    """
    keys = set(row)
    if {"question", "response_j", "response_k"} <= keys:
        return "stack_exchange"
    if {"chosen", "rejected"} <= keys:
        if isinstance(row["chosen"], list):
            return "chat_pairs"
        return "prompt_chosen_rejected" if "prompt" in keys else "hh_rlhf"
    if "messages" in keys:
        return "messages"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "prompt" in keys:
        return "prompt"
    raise DataError(None, None, f"cannot detect the data format from the keys {sorted(keys)}; expected prompt, "
                    "prompt+completion, messages, prompt+chosen+rejected, chosen+rejected (chat turns or HH "
                    "transcripts) or question+response_j+response_k (or set data.format)")


def check_format(fmt: str, allowed: tuple[str, ...], kind: str) -> None:
    """Raise DataError when format ``fmt`` cannot make ``kind`` examples."""
    if fmt not in allowed:
        raise DataError(None, None, f"format {fmt!r} cannot be used for {kind} data; use one of {', '.join(allowed)}")


def detect_format_for(row: dict, allowed: tuple[str, ...], kind: str) -> str:
    """`detect_format`, raising DataError (naming the row's keys) when the result cannot make ``kind`` examples."""
    fmt = detect_format(row)
    if fmt not in allowed:
        raise DataError(None, None, f"the keys {sorted(row)} look like format {fmt!r}, but {kind} data needs "
                        f"one of {', '.join(allowed)}")
    return fmt


# ---- field access -------------------------------------------------------------------------

def _field(row: dict, name: str):
    if name not in row or row[name] is None:
        raise DataError(None, None, f"missing field {name!r} (row has keys: {', '.join(sorted(row)) or 'none'})")
    return row[name]


def _text(row: dict, name: str, what: str | None = None) -> str:
    """A non-empty string field (``what`` names it in the empty-value error, e.g. 'response')."""
    value = _field(row, name)
    if not isinstance(value, str):
        raise DataError(None, None, f"field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(None, None, f"empty {what or 'field'} in {name!r}")
    return value


def _messages(value, name: str) -> Messages:
    if not isinstance(value, list):
        raise DataError(None, None, f"field {name!r} must be a list of {{role, content}} turns, got {type(value).__name__}")
    if not value:
        raise DataError(None, None, f"field {name!r} has no turns")
    turns = []
    for i, turn in enumerate(value, start=1):
        if not isinstance(turn, dict):
            raise DataError(None, None, f"field {name!r}: turn {i} must be an object, got {type(turn).__name__}")
        for key in ("role", "content"):
            if key not in turn or turn[key] is None:
                raise DataError(None, None, f"field {name!r}: turn {i} has no {key!r}")
            if not isinstance(turn[key], str):
                raise DataError(None, None, f"field {name!r}: turn {i} {key!r} must be a string, got {type(turn[key]).__name__}")
        turns.append({"role": turn["role"], "content": turn["content"]})
    return turns


def _split_response(turns: Messages, name: str) -> tuple[Messages, str]:
    """(prompt turns, response) of a conversation whose last turn is the assistant response."""
    last = turns[-1]
    if last["role"] != "assistant":
        raise DataError(None, None, f"field {name!r}: the last turn must be the assistant response, got role {last['role']!r}")
    if not last["content"].strip():
        raise DataError(None, None, f"empty response in {name!r}")
    return turns[:-1], last["content"]


def _user_prompt(text: str) -> Messages:
    return [{"role": "user", "content": text}]


def _prompt_field(row: dict) -> Messages:
    """``prompt`` as a string (one user turn) or as a list of turns."""
    value = _field(row, "prompt")
    if isinstance(value, list):
        return _messages(value, "prompt")
    return _user_prompt(_text(row, "prompt", "prompt"))


# ---- HH-RLHF transcripts -------------------------------------------------------------------

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_turns(row: dict, name: str) -> Messages:
    value = _field(row, name)
    if not isinstance(value, str):
        raise DataError(None, None, f"field {name!r} must be a string, got {type(value).__name__}")
    parts = _HH_TURN.split("\n\n" + value.lstrip())
    if parts[0].strip() or len(parts) < 3:
        raise DataError(None, None, f"field {name!r} is not an HH transcript of '\\n\\nHuman: ...' and "
                        "'\\n\\nAssistant: ...' turns")
    return [{"role": _HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


# ---- shared prompt of two conversations ------------------------------------------------------

def _shared_prompt(chosen: Messages, rejected: Messages, what: str) -> Messages:
    if chosen != rejected:
        for i, (a, b) in enumerate(zip(chosen, rejected), start=1):
            if a != b:
                break
        else:
            i = min(len(chosen), len(rejected)) + 1
        raise DataError(None, None, f"chosen and rejected {what} do not share the same prompt turns "
                        f"(they differ at turn {i}: {len(chosen)} vs {len(rejected)} prompt turns)")
    return chosen


# ---- adapters --------------------------------------------------------------------------------

def _preference(row: dict, fmt: str) -> tuple[Messages, str, str]:
    if fmt == "prompt_chosen_rejected":
        return _prompt_field(row), _text(row, "chosen", "response"), _text(row, "rejected", "response")
    if fmt == "stack_exchange":
        return (_user_prompt(_text(row, "question", "question")),
                _text(row, "response_j", "response"), _text(row, "response_k", "response"))
    if fmt == "chat_pairs":
        chosen_prompt, chosen = _split_response(_messages(_field(row, "chosen"), "chosen"), "chosen")
        rejected_prompt, rejected = _split_response(_messages(_field(row, "rejected"), "rejected"), "rejected")
        prompt = _shared_prompt(chosen_prompt, rejected_prompt, "conversations")
        if not prompt:
            if "prompt" not in row:
                raise DataError(None, None, "chosen and rejected hold only the response and there is no 'prompt' field")
            prompt = _prompt_field(row)
        return prompt, chosen, rejected
    if fmt == "hh_rlhf":
        chosen_prompt, chosen = _split_response(_hh_turns(row, "chosen"), "chosen")
        rejected_prompt, rejected = _split_response(_hh_turns(row, "rejected"), "rejected")
        prompt = _shared_prompt(chosen_prompt, rejected_prompt, "transcripts")
        if not prompt:
            raise DataError(None, None, "HH transcript has no Human turn before the final Assistant response")
        return prompt, chosen, rejected
    raise DataError(None, None, f"format {fmt!r} is not a preference format")


def to_prompt_example(row: dict, fmt: str) -> PromptExample:
    """A prompt from a row of any format (``fmt`` resolved, not 'auto')."""
    if fmt in ("prompt", "prompt_completion"):
        prompt = _prompt_field(row)
    elif fmt == "messages":
        turns = _messages(_field(row, "messages"), "messages")
        last_user = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=None)
        if last_user is None:
            raise DataError(None, None, "field 'messages' has no user turn")
        prompt = turns[: last_user + 1]
    else:
        check_format(fmt, PROMPT_FORMATS, "prompt")
        prompt = _preference(row, fmt)[0]
    return PromptExample(prompt, plain_prompt(prompt))


def to_sft_example(row: dict, fmt: str) -> SFTExample:
    """A prompt and completion from a ``prompt_completion`` or ``messages`` row."""
    check_format(fmt, SFT_FORMATS, "SFT")
    if fmt == "prompt_completion":
        return SFTExample(_prompt_field(row), _text(row, "completion", "response"))
    prompt, response = _split_response(_messages(_field(row, "messages"), "messages"), "messages")
    if not prompt:
        raise DataError(None, None, "field 'messages' has no prompt turns before the assistant response")
    return SFTExample(prompt, response)


def to_preference_example(row: dict, fmt: str) -> PreferenceExample:
    """A prompt with chosen and rejected responses from a row of a preference format."""
    check_format(fmt, PREFERENCE_FORMATS, "preference")
    return PreferenceExample(*_preference(row, fmt))
