"""The "qwen2" family: Qwen2-Instruct-shaped.

Byte-level BPE (Qwen2's pre-tokenizer regex, one token per digit), special tokens after the
BPE vocabulary, **a pad token that differs from the chat EOS** (pad ``<|endoftext|>``, EOS
``<|im_end|>``), no BOS, the ChatML template (with Qwen2's default system turn when the
conversation has none, and a newline after each ``<|im_end|>``), two EOS ids and the real
model's sampling defaults (temperature 0.7, top-p 0.8, top-k 20, repetition penalty 1.05) in
the generation config, the Qwen2 architecture (bias on q/k/v) and **tied** embeddings.
"""

from __future__ import annotations

import os

from rlhf.tiny import bpe
from rlhf.tiny.family import MODEL_SHAPE, Family

END_OF_TEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]
BPE_VOCAB_SIZE = 320

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(out_dir: str | os.PathLike | None = None):
    """The Qwen2-shaped tokenizer; saved to ``out_dir`` when one is given."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(bpe.QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    vocab, merges = bpe.train_bpe(pre, BPE_VOCAB_SIZE, pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab, merges))
    backend.pre_tokenizer = pre
    backend.decoder = decoders.ByteLevel()
    tokenizer = bpe.wrap(backend, special_tokens=SPECIAL_TOKENS, chat_template=CHAT_TEMPLATE, eos_token=IM_END, pad_token=END_OF_TEXT)
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def model_config(tokenizer, **overrides):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=tokenizer.pad_token_id,  # Qwen2 configs name <|endoftext|> as BOS; nothing writes it
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
        **MODEL_SHAPE,
        **overrides,
    )


def generation_config(tokenizer) -> dict:
    return dict(
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05,
    )


FAMILY = Family("qwen2", build_tokenizer, "Qwen2", model_config, generation_config)
