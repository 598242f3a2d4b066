"""The "llama3" family: Llama-3-Instruct-shaped.

Byte-level BPE (Llama-3's pre-tokenizer regex, digits in groups of up to 3), special tokens
after the BPE vocabulary, **no pad token**, a BOS (``<|begin_of_text|>``) that the tokenizer's
post-processor adds *and* the chat template writes (as in the real tokenizer, so plain-text
tokenization starts with BOS too), the header chat template, **two EOS ids** in the generation
config (``<|end_of_text|>``, ``<|eot_id|>``; the tokenizer's EOS is ``<|eot_id|>``), the real
model's sampling defaults in the generation config (temperature 0.6, top-p 0.9), and
**tied** input/output embeddings.
"""

from __future__ import annotations

import os

from rlhf.tiny import bpe
from rlhf.tiny.family import MODEL_SHAPE, Family

BOS, END_OF_TEXT, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
START_HEADER, END_HEADER = "<|start_header_id|>", "<|end_header_id|>"
SPECIAL_TOKENS = [BOS, END_OF_TEXT, START_HEADER, END_HEADER, EOT]
BPE_VOCAB_SIZE = 400

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def build_tokenizer(out_dir: str | os.PathLike | None = None):
    """The Llama-3-shaped tokenizer; saved to ``out_dir`` when one is given."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(bpe.LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    vocab, merges = bpe.train_bpe(pre, BPE_VOCAB_SIZE, pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    backend.pre_tokenizer = pre
    backend.decoder = decoders.ByteLevel()
    bos_id = len(vocab)  # the first special token appended after the BPE vocabulary
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = bpe.wrap(backend, special_tokens=SPECIAL_TOKENS, chat_template=CHAT_TEMPLATE, bos_token=BOS, eos_token=EOT)
    assert tokenizer.bos_token_id == bos_id
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def _eos_ids(tokenizer) -> list[int]:
    return tokenizer.convert_tokens_to_ids([END_OF_TEXT, EOT])


def model_config(tokenizer, **overrides):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=_eos_ids(tokenizer),
        pad_token_id=None,
        dtype="float32",
        **MODEL_SHAPE,
        **overrides,
    )


def generation_config(tokenizer) -> dict:
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=_eos_ids(tokenizer), do_sample=True, temperature=0.6, top_p=0.9)


FAMILY = Family("llama3", build_tokenizer, "Llama", model_config, generation_config)
