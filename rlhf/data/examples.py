"""The normalised examples every format adapter produces, and the field readers they share.

Every example holds the prompt as chat messages (``[{"role", "content"}, ...]``); a plain
string prompt becomes one user turn. A malformed field raises `DataError` with the reason
only; the loader adds the file and row.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.data.errors import DataError

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


class _PlainPrompt:
    """``raw_prompt``: the prompt turns as text without a template (`plain_prompt`), for rule rewards."""

    prompt_messages: Messages

    @property
    def raw_prompt(self) -> str:
        return plain_prompt(self.prompt_messages)


@dataclass(frozen=True)
class SFTExample(_PlainPrompt):
    """A prompt and the target completion (the assistant response)."""

    prompt_messages: Messages
    completion: str


@dataclass(frozen=True)
class PreferenceExample(_PlainPrompt):
    """A prompt with a preferred (``chosen``) and a dispreferred (``rejected``) response."""

    prompt_messages: Messages
    chosen: str
    rejected: str


@dataclass(frozen=True)
class UnpairedExample(_PlainPrompt):
    """A prompt and one completion labelled desirable (True) or undesirable (False), as KTO uses."""

    prompt_messages: Messages
    completion: str
    desirable: bool


@dataclass(frozen=True)
class ScoredExample(_PlainPrompt):
    """A prompt, one response and its score (a reward model's regression target, e.g. HelpSteer's helpfulness)."""

    prompt_messages: Messages
    completion: str
    score: float


# ---- field readers ----------------------------------------------------------------------------

def field(row: dict, name: str):
    """``row[name]``; missing or null is a DataError naming the row's keys."""
    if name not in row or row[name] is None:
        raise DataError(None, None, f"missing field {name!r} (row has keys: {', '.join(sorted(row)) or 'none'})")
    return row[name]


def text(row: dict, name: str, what: str | None = None) -> str:
    """A non-empty string field (``what`` names it in the empty-value error, e.g. 'response')."""
    value = field(row, name)
    if not isinstance(value, str):
        raise DataError(None, None, f"field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(None, None, f"empty {what or 'field'} in {name!r}")
    return value


def turns(value, name: str, role_key: str = "role", content_key: str = "content", roles: dict | None = None) -> Messages:
    """A non-empty list of turn objects -> ``[{"role", "content"}]`` (extra keys dropped).

    ``roles`` maps the file's role names to ours (ShareGPT's human/gpt); an unknown one is an error.
    """
    if not isinstance(value, list):
        raise DataError(None, None, f"field {name!r} must be a list of {{{role_key}, {content_key}}} turns, got {type(value).__name__}")
    if not value:
        raise DataError(None, None, f"field {name!r} has no turns")
    out = []
    for i, turn in enumerate(value, start=1):
        if not isinstance(turn, dict):
            raise DataError(None, None, f"field {name!r}: turn {i} must be an object, got {type(turn).__name__}")
        for key in (role_key, content_key):
            if key not in turn or turn[key] is None:
                raise DataError(None, None, f"field {name!r}: turn {i} has no {key!r}")
            if not isinstance(turn[key], str):
                raise DataError(None, None, f"field {name!r}: turn {i} {key!r} must be a string, got {type(turn[key]).__name__}")
        role = turn[role_key]
        if roles is not None:
            if role not in roles:
                raise DataError(None, None, f"field {name!r}: turn {i} has unknown role {role!r} (known: {', '.join(roles)})")
            role = roles[role]
        out.append({"role": role, "content": turn[content_key]})
    return out


def split_response(conversation: Messages, name: str) -> tuple[Messages, str]:
    """(prompt turns, response) of a conversation whose last turn is the assistant response."""
    last = conversation[-1]
    if last["role"] != "assistant":
        raise DataError(None, None, f"field {name!r}: the last turn must be the assistant response, got role {last['role']!r}")
    if not last["content"].strip():
        raise DataError(None, None, f"empty response in {name!r}")
    return conversation[:-1], last["content"]


def prompt_turns(conversation: Messages, name: str) -> Messages:
    """The turns up to and including the last user turn."""
    last_user = max((i for i, t in enumerate(conversation) if t["role"] == "user"), default=None)
    if last_user is None:
        raise DataError(None, None, f"field {name!r} has no user turn")
    return conversation[: last_user + 1]


def user_prompt(content: str, system: str | None = None) -> Messages:
    """One user turn, after a system turn when ``system`` is a non-empty string."""
    head = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
    return head + [{"role": "user", "content": content}]


def prompt_field(row: dict, name: str = "prompt") -> Messages:
    """``row[name]`` as a string (one user turn) or as a list of turns."""
    value = field(row, name)
    if isinstance(value, list):
        return turns(value, name)
    return user_prompt(text(row, name, "prompt"))
