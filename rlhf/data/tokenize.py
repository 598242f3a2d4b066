"""Turning examples into token ids: chat template, response-only loss mask, truncation.

With ``DataConfig.apply_chat_template`` (the default) the prompt is the tokenizer's chat
template applied to the prompt turns with ``add_generation_prompt=True``: exactly what the
rollout engine is given. A response is tokenized inside the template, as the tokens that
``messages + [assistant response]`` adds after the prompt. The rendered strings are tokenized
with ``add_special_tokens=False`` (a template that wants a BOS writes it itself). The template is
the tokenizer's (the loader gives it ``data.chat_template`` first); ``data.system_prompt`` is
prepended as a system turn to prompts without one.

Guarantees, for every example:

- **Exact text.** ``decode(prompt_ids + response_ids)`` is the rendered conversation up to and
  including the response's stop token (as the tokenizer decodes the whole conversation's own
  tokens). When the conversation's ids do not start with the prompt's ids (the tokenizer merged
  the prompt's last token with the response's first), the text after the prompt is tokenized on
  its own (exact for byte-level BPE) or, if that decodes differently (SentencePiece/Metaspace
  tokenizers prepend a '▁' at the start of the input), right after a special token; a row where
  neither decodes exactly is a `DataError`.
- **One stop token.** The response ends at the first id of the stop set the rollout engines stop
  on (`rlhf.data.stop_tokens`: generation_config EOS ids, the tokenizer's EOS, the template's
  end-of-turn token), which is the end-of-turn token the template writes; whatever the template
  writes after it (ChatML's newline, a second EOS) is not trained on. When the template writes
  none, the template's end-of-turn token (else the tokenizer's EOS) is appended. When the
  template renders the final assistant turn differently from its generation prompt (the
  conversation string does not start with the prompt string) the response is the content's ids
  followed by that token.

Without the template the prompt is the plain text (`formats.plain_prompt`) with the special
tokens the tokenizer puts before a text (BOS) but none after it (a tokenizer that appends EOS
would end every prompt with EOS); the conversation is the prompt text followed directly by the
response text, tokenized the same way and split as above, ending in the tokenizer's EOS.

Truncation (``DataConfig.truncation``), applied to the prompt (``max_prompt_len``) and to each
response (``max_response_len``) separately:

- ``error``: an over-long row raises ``DataError("prompt has N tokens, limit M")`` (or
  "chosen response has ..."), which ``on_error`` then raises or skips.
- ``left``: drop the oldest conversation turns first (whole turns, the system turns and the
  last user turn stay, replies before the next user turn go with it so turns alternate); if the
  prompt is still too long, keep its head (BOS, the system turns and the header of the first
  remaining turn) and the newest tokens, cutting in between. Responses keep their first
  ``max_response_len`` tokens.
- ``right``: keep the first tokens of both (the generation prompt at the end of the prompt
  may be cut).

A truncated response loses its stop token, so the model is not taught to stop where the data did
not. The loss mask is 1 on response tokens (stop token included) and 0 on prompt tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.config import DataConfig
from rlhf.data.errors import DataError
from rlhf.data.examples import (
    Messages,
    PreferenceExample,
    PromptExample,
    ScoredExample,
    SFTExample,
    UnpairedExample,
    plain_prompt,
)
from rlhf.data.stop_tokens import end_of_turn_id, stop_token_ids


@dataclass(frozen=True)
class TokenizedPrompt:
    prompt_ids: list[int]
    raw_prompt: str


@dataclass(frozen=True)
class TokenizedSFT:
    prompt_ids: list[int]
    response_ids: list[int]

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    @property
    def loss_mask(self) -> list[int]:
        return [0] * len(self.prompt_ids) + [1] * len(self.response_ids)


@dataclass(frozen=True)
class TokenizedPreference:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    @property
    def chosen_input_ids(self) -> list[int]:
        return self.prompt_ids + self.chosen_ids

    @property
    def chosen_loss_mask(self) -> list[int]:
        return [0] * len(self.prompt_ids) + [1] * len(self.chosen_ids)

    @property
    def rejected_input_ids(self) -> list[int]:
        return self.prompt_ids + self.rejected_ids

    @property
    def rejected_loss_mask(self) -> list[int]:
        return [0] * len(self.prompt_ids) + [1] * len(self.rejected_ids)


@dataclass(frozen=True)
class TokenizedUnpaired(TokenizedSFT):
    """A `TokenizedSFT` labelled desirable or undesirable (KTO)."""

    desirable: bool


@dataclass(frozen=True)
class TokenizedScored(TokenizedSFT):
    """A `TokenizedSFT` with the response's score (a reward model's regression target)."""

    score: float


def tokenize_prompt(example: PromptExample, tokenizer, cfg: DataConfig) -> TokenizedPrompt:
    """Prompt ids (templated with the generation prompt, or plain), truncated per ``cfg``."""
    messages, (_, ids) = _prompt(example.prompt_messages, tokenizer, cfg)
    return TokenizedPrompt(_truncate_prompt(ids, messages, tokenizer, cfg), example.raw_prompt)


def tokenize_sft(example: SFTExample, tokenizer, cfg: DataConfig) -> TokenizedSFT:
    """Prompt and completion ids; ``loss_mask`` covers the completion and its stop token."""
    messages, prompt = _prompt(example.prompt_messages, tokenizer, cfg)
    response_ids = _response_ids(messages, prompt, example.completion, tokenizer, cfg)
    return TokenizedSFT(_truncate_prompt(prompt[1], messages, tokenizer, cfg), _truncate_response(response_ids, cfg, "response"))


def tokenize_preference(example: PreferenceExample, tokenizer, cfg: DataConfig) -> TokenizedPreference:
    """Shared prompt ids and the chosen and rejected response ids (each ending in its stop token)."""
    messages, prompt = _prompt(example.prompt_messages, tokenizer, cfg)
    chosen = _response_ids(messages, prompt, example.chosen, tokenizer, cfg)
    rejected = _response_ids(messages, prompt, example.rejected, tokenizer, cfg)
    return TokenizedPreference(
        _truncate_prompt(prompt[1], messages, tokenizer, cfg),
        _truncate_response(chosen, cfg, "chosen response"),
        _truncate_response(rejected, cfg, "rejected response"),
    )


def tokenize_unpaired(example: UnpairedExample, tokenizer, cfg: DataConfig) -> TokenizedUnpaired:
    """Prompt and completion ids (as `tokenize_sft`) with the example's desirable/undesirable label."""
    sft = tokenize_sft(SFTExample(example.prompt_messages, example.completion), tokenizer, cfg)
    return TokenizedUnpaired(sft.prompt_ids, sft.response_ids, example.desirable)


def tokenize_scored(example: ScoredExample, tokenizer, cfg: DataConfig) -> TokenizedScored:
    """Prompt and response ids (as `tokenize_sft`) with the response's score."""
    sft = tokenize_sft(SFTExample(example.prompt_messages, example.completion), tokenizer, cfg)
    return TokenizedScored(sft.prompt_ids, sft.response_ids, example.score)


def check_tokenizer(tokenizer, cfg: DataConfig) -> None:
    """Raise ValueError (a setup problem, not a bad row) if the tokenizer cannot serve ``cfg``."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; responses must end with one")
    if cfg.apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; set data.chat_template (chatml, llama2, zephyr or a Jinja "
                         "file) or data.apply_chat_template=false")


# ---- internals ---------------------------------------------------------------------------------

def _encode(tokenizer, text: str, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _encode_plain(tokenizer, text: str) -> list[int]:
    """``text`` with the special tokens the tokenizer puts before it (BOS) but none after it:
    a tokenizer that appends EOS would otherwise end a prompt with EOS."""
    with_special, plain = _encode(tokenizer, text, special=True), _encode(tokenizer, text)
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[: start + len(plain)]
    return plain


def _render(tokenizer, messages: Messages, generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # jinja's TemplateError and friends: a row the template rejects
        raise DataError(None, None, f"chat template failed: {e}") from None


def _render_prompt(messages: Messages, tokenizer, cfg: DataConfig) -> tuple[str, list[int]]:
    """(prompt text, untruncated prompt ids)."""
    if not cfg.apply_chat_template:
        text = plain_prompt(messages)
        return text, _encode_plain(tokenizer, text)
    text = _render(tokenizer, messages, generation_prompt=True)
    return text, _encode(tokenizer, text)


def _render_conversation(messages: Messages, response: str, tokenizer, cfg: DataConfig) -> tuple[str, list[int]]:
    """(text, ids) of the prompt turns followed by the assistant ``response``."""
    if not cfg.apply_chat_template:
        text = plain_prompt(messages) + response
        return text, _encode_plain(tokenizer, text)
    text = _render(tokenizer, messages + [{"role": "assistant", "content": response}], generation_prompt=False)
    return text, _encode(tokenizer, text)


def _prompt(messages: Messages, tokenizer, cfg: DataConfig) -> tuple[Messages, tuple[str, list[int]]]:
    """(prompt turns, (text, untruncated ids)), after ``data.system_prompt`` when there is no
    system turn. With left truncation the oldest turns are dropped first (the system turns and
    the last user turn stay) until the prompt fits."""
    if cfg.system_prompt is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": cfg.system_prompt}] + messages
    rendered = _render_prompt(messages, tokenizer, cfg)
    while cfg.truncation == "left" and len(rendered[1]) > cfg.max_prompt_len:
        shorter = _without_oldest_turn(messages)
        if shorter is None:
            break
        messages, rendered = shorter, _render_prompt(shorter, tokenizer, cfg)
    return messages, rendered


def _without_oldest_turn(messages: Messages) -> Messages | None:
    """The turns without the oldest non-system turn (and the replies before the next user turn,
    so that turns still alternate); None when only the last user turn is left to drop."""
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    rest = messages[head + 1 :]
    while rest and rest[0]["role"] != "user":
        rest = rest[1:]
    return messages[:head] + rest if rest else None


def _response_ids(messages: Messages, prompt: tuple[str, list[int]], response: str, tokenizer, cfg: DataConfig) -> list[int]:
    """The untruncated response ids that follow the prompt (text, ids), ending in one stop token."""
    stops = stop_token_ids(tokenizer, chat_template=cfg.apply_chat_template)
    end_of_turn = end_of_turn_id(tokenizer) if cfg.apply_chat_template else None
    terminator = end_of_turn if end_of_turn is not None else tokenizer.eos_token_id
    prompt_text, prompt_ids = prompt
    full_text, full_ids = _render_conversation(messages, response, tokenizer, cfg)
    if full_text.startswith(prompt_text):
        ids = _continuation(prompt_ids, full_ids, full_text[len(prompt_text):], tokenizer)
    else:  # a template rendering the final assistant turn differently from its generation prompt
        ids = _encode_after_special(tokenizer, response) or _encode(tokenizer, response)
    end = next((i for i, token in enumerate(ids) if token in stops), None)
    return ids[: end + 1] if end is not None else ids + [terminator]


def _continuation(prompt_ids: list[int], full_ids: list[int], suffix: str, tokenizer) -> list[int]:
    """The ids that follow ``prompt_ids`` so that ``prompt_ids + ids`` decodes as ``full_ids`` does.

    Usually ``full_ids`` starts with ``prompt_ids`` and the rest is the answer. When the
    tokenizer merged tokens across the boundary, ``suffix`` (the text after the prompt) is
    tokenized on its own (exact for byte-level BPE), else right after a special token (exact
    for SentencePiece/Metaspace tokenizers, which prepend a '▁' to text at the start of the
    input but not after a special token).
    """
    if full_ids[: len(prompt_ids)] == prompt_ids:
        return full_ids[len(prompt_ids):]
    target = _decode(tokenizer, full_ids)
    for ids in (_encode(tokenizer, suffix), _encode_after_special(tokenizer, suffix)):
        if ids is not None and _decode(tokenizer, prompt_ids + ids) == target:
            return ids
    raise DataError(None, None, "the tokenizer merges the prompt's last token with the response's first, and no "
                    "tokenization of the response decodes, after the prompt's tokens, to the rendered conversation")


def _encode_after_special(tokenizer, text: str) -> list[int] | None:
    """``text``'s ids as tokenized right after the EOS token (None when EOS is not a single leading id)."""
    anchor = getattr(tokenizer, "eos_token", None)
    if not anchor:
        return None
    anchor_ids, ids = _encode(tokenizer, anchor), _encode(tokenizer, anchor + text)
    return ids[len(anchor_ids):] if len(anchor_ids) == 1 and ids[:1] == anchor_ids else None


def _kept_head(ids: list[int], messages: Messages, tokenizer, cfg: DataConfig) -> int:
    """How many leading prompt tokens left truncation keeps: BOS, the system turns and the
    header of the first remaining turn, i.e. the ids the prompt shares with the same turns
    rendered with a placeholder in place of the first non-system turn's content."""
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    placeholder = messages[:head] + [{"role": "user", "content": "\x00"}]
    try:
        other = _render_prompt(placeholder, tokenizer, cfg)[1]
    except DataError:  # a template that rejects the placeholder turn: keep BOS only
        other = ids[:1] if ids[:1] == [tokenizer.bos_token_id] else []
    shared = 0
    while shared < min(len(ids), len(other)) and ids[shared] == other[shared]:
        shared += 1
    return shared


def _truncate_prompt(ids: list[int], messages: Messages, tokenizer, cfg: DataConfig) -> list[int]:
    limit = cfg.max_prompt_len
    if len(ids) <= limit:
        return ids
    if cfg.truncation == "error":
        raise DataError(None, None, f"prompt has {len(ids)} tokens, limit {limit} "
                        "(raise data.max_prompt_len or set data.truncation to left or right)")
    if cfg.truncation == "right":
        return ids[:limit]
    head = _kept_head(ids, messages, tokenizer, cfg)
    if head >= limit:
        head = 1 if limit > 1 and ids[0] == tokenizer.bos_token_id else 0
    return ids[:head] + ids[len(ids) - (limit - head):]


def _truncate_response(ids: list[int], cfg: DataConfig, what: str) -> list[int]:
    limit = cfg.max_response_len
    if len(ids) <= limit:
        return ids
    if cfg.truncation == "error":
        raise DataError(None, None, f"{what} has {len(ids)} tokens, limit {limit} "
                        "(raise data.max_response_len or set data.truncation to left or right)")
    return ids[:limit]
