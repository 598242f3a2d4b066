"""BPE vocabularies trained locally (``tokenizers``) on the task's text, for the real-model-shaped families.

Real tokenizers are BPE over bytes (Llama-3, Qwen2) or SentencePiece pieces with byte fallback
(Mistral); they merge characters, so one token may hold several characters (``"18"``, ``"▁You"``)
and decoding is not a concatenation of characters. Training on the arithmetic task's text
(prompts, answers, number words, a system prompt, the template role names) keeps the
vocabulary a few hundred entries, so the models stay tiny. Training is deterministic.
"""

from __future__ import annotations

import json

from rlhf.tasks import arithmetic
from rlhf.tiny.data import NUMBER_WORDS

_SENTENCES = ["You are a helpful assistant.", "Be brief.", "Answer with a number.", "What is the sum?"]
_ROLES = ["system", "user", "assistant"]

# The pre-tokenizer regexes of the real tokenizers: Llama-3 groups up to 3 digits, Qwen2 splits every digit.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def task_corpus() -> list[str]:
    """The training text: every prompt and answer of the task, alone and after a template header."""
    lines = []
    for a in range(10):
        for b in range(10):
            prompt, answer = arithmetic.make_prompt(a, b), arithmetic.answer(a, b)
            lines += [prompt, answer, f"user\n\n{prompt}", f"assistant\n\n{answer}", f" {prompt} ", f"{prompt} {answer}"]
    lines += NUMBER_WORDS + [" ".join(NUMBER_WORDS)] + _SENTENCES + [f"{r}\n\n{s}" for r in _ROLES for s in _SENTENCES]
    return lines


def train_bpe(pre_tokenizer, vocab_size: int, initial_alphabet: list[str] | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a BPE trained on `task_corpus` after ``pre_tokenizer`` (ids 0.. in training order)."""
    from tokenizers import Tokenizer, models, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, initial_alphabet=initial_alphabet or [], show_progress=False
    )
    backend.train_from_iterator(task_corpus(), trainer)
    model = json.loads(backend.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def wrap(backend, *, special_tokens: list[str], chat_template: str, **tokens):
    """A ``PreTrainedTokenizerFast`` around ``backend`` with ``special_tokens`` appended as added tokens.

    ``tokens`` names the roles (``bos_token``, ``eos_token``, ``pad_token``, ``unk_token``);
    the other special tokens become ``additional_special_tokens``.
    """
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from rlhf.tiny.family import MODEL_SHAPE

    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    named = set(tokens.values())
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        additional_special_tokens=[t for t in special_tokens if t not in named],
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
        chat_template=chat_template,
        **tokens,
    )
