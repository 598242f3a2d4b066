"""The "char" family: a character-level tokenizer with its own pad token, one EOS, untied Llama.

The first tiny assets, kept byte-identical. One token per character (digits, ASCII letters,
space, newline and some punctuation; anything else is ``<unk>``); special tokens are single
ids. Decoding concatenates characters, with no spaces in between. Neither the tokenizer nor
the chat template adds a BOS token: ``tokenizer("3+4=")`` is exactly the four character ids,
and the chat template marks turns with ``<|system|>`` / ``<|user|>`` / ``<|assistant|>`` and
ends each with ``</s>`` (the EOS token, so a model trained on templated data learns to stop).
``add_generation_prompt=True`` appends ``<|assistant|>``. Padding is on the left.
"""

from __future__ import annotations

import os

from rlhf.tiny.family import MODEL_SHAPE, Family

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, SYSTEM, USER, ASSISTANT]
CHARACTERS = (
    "0123456789"
    " \n+-*/=<>,.:;!?()[]'\"_#%"
    "abcdefghijklmnopqrstuvwxyz"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>' + message['content'] + '</s>' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>' + message['content'] + '</s>' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>' + message['content'] + '</s>' }}"
    "{% else %}{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_tokenizer(out_dir: str | os.PathLike | None = None):
    """The character-level tokenizer; saved to ``out_dir`` when one is given."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + list(CHARACTERS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT],
        add_bos_token=False,
        add_eos_token=False,
        padding_side="left",
        truncation_side="left",
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def model_config(tokenizer, **overrides):
    """The LlamaConfig shared by the policy, reward and critic models (``overrides`` e.g. num_labels)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
        **MODEL_SHAPE,
        **overrides,
    )


def generation_config(tokenizer) -> dict:
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


FAMILY = Family("char", build_tokenizer, "Llama", model_config, generation_config)
