"""The "mistral" family: Mistral-Instruct-shaped.

A SentencePiece-style tokenizer: BPE over ``▁``-marked pieces (Metaspace, a ``▁`` prepended at
the start of the text, one token per digit) with byte fallback (``<0x00>`` .. ``<0xFF>``), ids
``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, then the control tokens ``[INST]`` / ``[/INST]``, then the
bytes and the pieces; decoding strips one leading space, as Llama-2/Mistral tokenizers do.
**No pad token**; the tokenizer adds BOS and the ``[INST]`` template writes it too (a system
turn is folded into the next user turn; ``add_generation_prompt`` adds nothing). The Mistral
architecture with a ``sliding_window`` in its config, and **untied** embeddings.
"""

from __future__ import annotations

import os

from rlhf.tiny import bpe
from rlhf.tiny.family import MODEL_SHAPE, Family

UNK, BOS, EOS, INST, END_INST = "<unk>", "<s>", "</s>", "[INST]", "[/INST]"
SPECIAL_TOKENS = [UNK, BOS, EOS, INST, END_INST]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
BPE_VOCAB_SIZE = 160
SLIDING_WINDOW = 128

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set system = namespace(text='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set system.text = message['content'] + '\n\n' %}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + system.text + message['content'] + ' [/INST]' }}"
    "{% set system.text = '' %}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
)


def build_tokenizer(out_dir: str | os.PathLike | None = None):
    """The Mistral-shaped tokenizer; saved to ``out_dir`` when one is given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    trained, merges = bpe.train_bpe(pre, BPE_VOCAB_SIZE)
    # Special tokens first, then the byte-fallback tokens, then the trained pieces (SentencePiece's layout).
    pieces = SPECIAL_TOKENS + BYTE_TOKENS + sorted(trained, key=trained.get)
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    backend = Tokenizer(models.BPE(vocab, merges, unk_token=UNK, byte_fallback=True, fuse_unk=True))
    backend.pre_tokenizer = pre
    backend.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1", special_tokens=[(BOS, vocab[BOS])]
    )
    tokenizer = bpe.wrap(backend, special_tokens=SPECIAL_TOKENS, chat_template=CHAT_TEMPLATE, bos_token=BOS, eos_token=EOS, unk_token=UNK)
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def model_config(tokenizer, **overrides):
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=False,
        sliding_window=SLIDING_WINDOW,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        dtype="float32",
        **MODEL_SHAPE,
        **overrides,
    )


def generation_config(tokenizer) -> dict:
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


FAMILY = Family("mistral", build_tokenizer, "Mistral", model_config, generation_config)
