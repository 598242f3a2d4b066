"""Turning examples into token ids: chat template, response-only loss mask, truncation.

With ``DataConfig.apply_chat_template`` (the default) the prompt is the tokenizer's chat
template applied to the prompt turns with ``add_generation_prompt=True``: exactly what the
rollout engine is given. A response is tokenized inside the template, as the tokens that
``messages + [assistant response]`` adds after the prompt, so that ``prompt_ids +
response_ids`` is the templated conversation and the response ids are exactly what the model
must generate after the prompt. The rendered strings are tokenized with
``add_special_tokens=False`` (a template that wants a BOS writes it itself). When the
conversation's ids do not start with the prompt's ids (a tokenizer merging across the
boundary), the rendered response text, i.e. the conversation string after the prompt
string, is tokenized on its own; when the conversation string does not even start with the
prompt string (a template that renders the final assistant turn differently from its
generation prompt), the response is the tokenized content followed by EOS. The response
ends with EOS: tokens a template writes after its EOS (ChatML's trailing newline) are
dropped, and an EOS is appended when the template wrote none.

Without the template the prompt is the plain text (`formats.plain_prompt`) tokenized with the
tokenizer's own special tokens (e.g. BOS), and the response is its text tokenized without
special tokens, followed by EOS; the two id lists are concatenated.

Truncation (``DataConfig.truncation``), applied after tokenization to the prompt
(``max_prompt_len``) and to each response (``max_response_len``) separately:

- ``error``: an over-long row raises ``DataError("prompt has N tokens, limit M")`` (or
  "chosen response has ..."), which ``on_error`` then raises or skips.
- ``left``: keep the last ``max_prompt_len`` prompt tokens (the newest turns and the
  generation prompt survive; a system turn or BOS at the start may not) and the first
  ``max_response_len`` response tokens.
- ``right``: keep the first tokens of both (the generation prompt at the end of the prompt
  may be cut).

A truncated response loses its EOS, so the model is not taught to stop where the data did not.
The loss mask is 1 on response tokens (EOS included) and 0 on prompt tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.config import DataConfig
from rlhf.data.errors import DataError
from rlhf.data.formats import Messages, PreferenceExample, PromptExample, SFTExample, plain_prompt


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


def tokenize_prompt(example: PromptExample, tokenizer, cfg: DataConfig) -> TokenizedPrompt:
    """Prompt ids (templated with the generation prompt, or plain), truncated per ``cfg``."""
    _, ids = _prompt(example.prompt_messages, tokenizer, cfg)
    return TokenizedPrompt(_truncate_prompt(ids, cfg), example.raw_prompt)


def tokenize_sft(example: SFTExample, tokenizer, cfg: DataConfig) -> TokenizedSFT:
    """Prompt and completion ids; ``loss_mask`` covers the completion and its EOS."""
    prompt = _prompt(example.prompt_messages, tokenizer, cfg)
    response_ids = _response_ids(example.prompt_messages, prompt, example.completion, tokenizer, cfg)
    return TokenizedSFT(_truncate_prompt(prompt[1], cfg), _truncate_response(response_ids, cfg, "response"))


def tokenize_preference(example: PreferenceExample, tokenizer, cfg: DataConfig) -> TokenizedPreference:
    """Shared prompt ids and the chosen and rejected response ids (each ending in EOS)."""
    prompt = _prompt(example.prompt_messages, tokenizer, cfg)
    chosen = _response_ids(example.prompt_messages, prompt, example.chosen, tokenizer, cfg)
    rejected = _response_ids(example.prompt_messages, prompt, example.rejected, tokenizer, cfg)
    return TokenizedPreference(
        _truncate_prompt(prompt[1], cfg),
        _truncate_response(chosen, cfg, "chosen response"),
        _truncate_response(rejected, cfg, "rejected response"),
    )


def check_tokenizer(tokenizer, cfg: DataConfig) -> None:
    """Raise ValueError (a setup problem, not a bad row) if the tokenizer cannot serve ``cfg``."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; responses must end with one")
    if cfg.apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; set data.apply_chat_template=false")


# ---- internals ---------------------------------------------------------------------------------

def _encode(tokenizer, text: str, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _render(tokenizer, messages: Messages, generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # jinja's TemplateError and friends: a row the template rejects
        raise DataError(None, None, f"chat template failed: {e}") from None


def _prompt(messages: Messages, tokenizer, cfg: DataConfig) -> tuple[str, list[int]]:
    """(prompt text, untruncated prompt ids)."""
    if not cfg.apply_chat_template:
        text = plain_prompt(messages)
        return text, _encode(tokenizer, text, special=True)
    text = _render(tokenizer, messages, generation_prompt=True)
    return text, _encode(tokenizer, text)


def _response_ids(messages: Messages, prompt: tuple[str, list[int]], response: str, tokenizer, cfg: DataConfig) -> list[int]:
    """The untruncated response ids that follow the prompt (text, ids), ending in EOS."""
    eos = tokenizer.eos_token_id
    if not cfg.apply_chat_template:
        return _encode(tokenizer, response) + [eos]
    prompt_text, prompt_ids = prompt
    full_text = _render(tokenizer, messages + [{"role": "assistant", "content": response}], generation_prompt=False)
    full_ids = _encode(tokenizer, full_text)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        ids = full_ids[len(prompt_ids):]
    elif full_text.startswith(prompt_text):
        ids = _encode(tokenizer, full_text[len(prompt_text):])
    else:
        return _encode(tokenizer, response) + [eos]
    return _end_with_eos(ids, eos, tokenizer)


def _end_with_eos(ids: list[int], eos: int, tokenizer) -> list[int]:
    if eos in ids:
        last = len(ids) - 1 - ids[::-1].index(eos)
        if not tokenizer.decode(ids[last + 1:]).strip():
            return ids[: last + 1]
    return ids + [eos]


def _truncate_prompt(ids: list[int], cfg: DataConfig) -> list[int]:
    limit = cfg.max_prompt_len
    if len(ids) <= limit:
        return ids
    if cfg.truncation == "error":
        raise DataError(None, None, f"prompt has {len(ids)} tokens, limit {limit} "
                        "(raise data.max_prompt_len or set data.truncation to left or right)")
    return ids[-limit:] if cfg.truncation == "left" else ids[:limit]


def _truncate_response(ids: list[int], cfg: DataConfig, what: str) -> list[int]:
    limit = cfg.max_response_len
    if len(ids) <= limit:
        return ids
    if cfg.truncation == "error":
        raise DataError(None, None, f"{what} has {len(ids)} tokens, limit {limit} "
                        "(raise data.max_response_len or set data.truncation to left or right)")
    return ids[:limit]
