"""The one stop set shared by the rollout engines and the training data.

A model's generation stops on any of its *stop ids*, in this order, without repeats:

1. the EOS id(s) of the model's ``generation_config.json`` (Llama-3: ``<|end_of_text|>``,
   ``<|eom_id|>``, ``<|eot_id|>``);
2. the tokenizer's ``eos_token_id``;
3. the chat template's end-of-turn token (`end_of_turn_id`: ChatML ``<|im_end|>``, Llama-3
   ``<|eot_id|>``, ``[INST]``/Zephyr ``</s>``), when prompts are templated.

The rollout engines stop on this set, and the data path ends every training response at the
first of them it writes (the template's end-of-turn token), so the model is taught to emit
exactly the token the engine stops on, once.
"""

from __future__ import annotations

import functools
import os

# Content of the probe assistant turn: plain words no template rewrites.
_PROBE_CONTENT = "probe reply"
_PROBE = [{"role": "user", "content": "probe question"}, {"role": "assistant", "content": _PROBE_CONTENT}]


def stop_token_ids(tokenizer, model_path: str | None = None, chat_template: bool = True) -> list[int]:
    """The stop ids of the model at ``model_path`` (default: the tokenizer's own directory).

    ``chat_template``: prompts are rendered with the tokenizer's chat template, so its
    end-of-turn token stops generation too. Raises ValueError when the set is empty.
    """
    path = model_path if model_path is not None else getattr(tokenizer, "name_or_path", "") or ""
    template = getattr(tokenizer, "chat_template", None) if chat_template else None
    ids = list(_cached_stop_ids(tokenizer, path, template))
    if not ids:
        raise ValueError(f"{path or 'tokenizer'}: no EOS token id in generation_config.json or the tokenizer")
    return ids


@functools.lru_cache(maxsize=32)
def _cached_stop_ids(tokenizer, path: str, template: str | None) -> tuple[int, ...]:
    # Keyed by the template too: the same tokenizer object may be given another template.
    ids: list[int] = []
    for token in [*generation_eos_ids(path), tokenizer.eos_token_id, end_of_turn_id(tokenizer) if template else None]:
        if token is not None and token not in ids:
            ids.append(token)
    return tuple(ids)


def generation_eos_ids(model_path: str) -> list[int]:
    """``eos_token_id`` of ``generation_config.json`` at ``model_path`` as a list ([] when absent)."""
    if not model_path or (os.path.isdir(model_path) and not os.path.isfile(os.path.join(model_path, "generation_config.json"))):
        return []
    from transformers import GenerationConfig

    try:  # a hub id: the hub's copy, when one is reachable
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])


def end_of_turn_id(tokenizer) -> int | None:
    """The first special token the chat template writes after an assistant turn's content.

    Found by rendering a probe conversation: ChatML's ``<|im_end|>`` (not the ``\\n`` after it),
    Llama-3's ``<|eot_id|>``, ``</s>`` for [INST] and Zephyr templates. None when there is no
    template, it rejects the probe, or it writes no special token after the content.
    """
    template = getattr(tokenizer, "chat_template", None)
    return _cached_end_of_turn(tokenizer, template) if template else None


@functools.lru_cache(maxsize=32)
def _cached_end_of_turn(tokenizer, template: str) -> int | None:
    try:
        text = tokenizer.apply_chat_template(_PROBE, tokenize=False)
    except Exception:  # jinja errors: a template that cannot render the probe has no known end of turn
        return None
    end = text.rfind(_PROBE_CONTENT)
    if end < 0:
        return None
    special = set(getattr(tokenizer, "all_special_ids", ()))
    special |= {i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special}
    special.discard(getattr(tokenizer, "unk_token_id", None))  # text the vocabulary lacks, not an end of turn
    after = tokenizer(text[end + len(_PROBE_CONTENT):], add_special_tokens=False)["input_ids"]
    return next((token for token in after if token in special), None)
