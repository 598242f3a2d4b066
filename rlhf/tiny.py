"""Tiny local assets for the CPU demos and tests (there is no model hub here).

``python -m rlhf.tiny OUTDIR [--seed N] [--force]`` writes, in a few seconds and
deterministically for a given seed::

    OUTDIR/
      manifest.json        paths (relative to OUTDIR), seed, format version
      tokenizer/           character-level tokenizer with a chat template
      policy/              LlamaForCausalLM, random init, + tokenizer + generation_config.json
      reward/              LlamaForSequenceClassification (num_labels=1) + tokenizer
      critic/              LlamaForTokenClassification (num_labels=1, a value per token) + tokenizer
      data/                jsonl splits of the single-digit addition task (rlhf.tasks.arithmetic)

Everything is saved in Hugging Face format, so plain ``transformers`` Auto classes
and vLLM load it the normal way.

Tokenizer. One token per character (digits, ASCII letters, space, newline and
some punctuation; anything else is ``<unk>``); special tokens are single ids.
Decoding concatenates characters, with no spaces in between. Neither the
tokenizer nor the chat template adds a BOS token: ``tokenizer("3+4=")`` is
exactly the four character ids, and the chat template marks turns with
``<|system|>`` / ``<|user|>`` / ``<|assistant|>`` and ends each with ``</s>``
(the EOS token, so a model trained on templated data learns to stop).
``add_generation_prompt=True`` appends ``<|assistant|>``. Padding is on the left.

Data. All 100 pairs ``a+b`` with single digits; a fixed 20 (chosen by the seed)
are held out, and every ``*_eval`` split uses exactly those 20 prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rlhf.tasks import arithmetic

# Bump when the content or layout of the assets changes, so stale directories rebuild.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

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

MODEL_SHAPE = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,  # head_dim 64: vLLM's CPU attention rejects 16
    max_position_embeddings=256,
)

N_EVAL_PROMPTS = 20
# Rejected completions per training prompt in pref_train.jsonl: wrong numbers and malformed strings.
N_PREF_WRONG_NUMBERS = 2
N_PREF_MALFORMED = 2
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                 "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                 "seventeen", "eighteen"]


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


def build_tiny_assets(out_dir: str | os.PathLike, seed: int = 0, force: bool = False) -> dict[str, str]:
    """Build the tiny assets into ``out_dir`` and return ``{name: absolute path}``.

    Returns at once when ``out_dir`` already holds a complete build for this
    seed and format version (unless ``force``). The build goes to a temporary
    sibling directory renamed into place at the end, so a half-built
    directory is never mistaken for a complete one, and concurrent builders
    of the same ``out_dir`` and seed end with one complete build.
    """
    out = Path(out_dir).resolve()
    if not force and _read_manifest(out, seed) is not None:
        return _paths(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists() and not force:
        raise FileExistsError(f"{out} is not empty and holds no {MANIFEST}; pass force=True (--force) to replace it")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        _build_into(tmp, seed)
        # Another builder may have finished meanwhile: keep its identical build.
        if force or _read_manifest(out, seed) is None:
            _replace_dir(tmp, out, seed)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _paths(out)


def _build_into(root: Path, seed: int) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        LlamaForTokenClassification,
    )

    tokenizer = build_tokenizer(root / "tokenizer")

    # Distinct seeds per model, forked so the caller's RNG state is left alone.
    with torch.random.fork_rng(devices=[]):
        for offset, (name, cls, extra) in enumerate([
            ("policy", LlamaForCausalLM, {}),
            ("reward", LlamaForSequenceClassification, {"num_labels": 1}),
            ("critic", LlamaForTokenClassification, {"num_labels": 1}),
        ]):
            torch.manual_seed(seed * 1000 + offset)
            model = cls(model_config(tokenizer, **extra)).to(torch.float32).eval()
            model.save_pretrained(root / name)
            tokenizer.save_pretrained(root / name)
            if name == "policy":
                GenerationConfig(
                    bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                ).save_pretrained(root / name)

    _write_data(root / "data", seed)
    _make_readable(root)
    manifest = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "vocab_size": len(tokenizer),
        "paths": {name: str(rel) for name, rel in _RELATIVE_PATHS.items()},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _write_data(data_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(10) for b in range(10)]
    eval_pairs = sorted(rng.sample(pairs, N_EVAL_PROMPTS))
    train_pairs = [p for p in pairs if p not in set(eval_pairs)]

    def prompt_rows(ps):
        return [{"prompt": arithmetic.make_prompt(a, b)} for a, b in ps]

    def message_rows(ps):
        return [{"messages": [{"role": "user", "content": arithmetic.make_prompt(a, b)}]} for a, b in ps]

    def sft_rows(ps):
        return [{"prompt": arithmetic.make_prompt(a, b), "completion": arithmetic.answer(a, b)} for a, b in ps]

    def pref_rows(ps, n_wrong, n_malformed):
        rows = []
        for a, b in ps:
            prompt, good = arithmetic.make_prompt(a, b), arithmetic.answer(a, b)
            rejected = [_wrong_number(rng, a + b) for _ in range(n_wrong)]
            rejected += [_malformed(rng, a + b) for _ in range(n_malformed)]
            rows += [{"prompt": prompt, "chosen": good, "rejected": r} for r in rejected]
        return rows

    data_dir.mkdir(parents=True)
    splits = {
        "prompts_train": prompt_rows(train_pairs),
        "prompts_eval": prompt_rows(eval_pairs),
        "prompts_train_messages": message_rows(train_pairs),
        "prompts_eval_messages": message_rows(eval_pairs),
        "sft_train": sft_rows(train_pairs),
        "sft_eval": sft_rows(eval_pairs),
        "pref_train": pref_rows(train_pairs, N_PREF_WRONG_NUMBERS, N_PREF_MALFORMED),
        "pref_eval": pref_rows(eval_pairs, 1, 1),
    }
    for name, rows in splits.items():
        with open(data_dir / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)


def _wrong_number(rng: random.Random, total: int) -> str:
    """A wrong sum: usually off by 1-3 (a near miss), sometimes any other number 0-18."""
    if rng.random() < 0.5:
        candidates = [total + d for d in (-3, -2, -1, 1, 2, 3) if 0 <= total + d <= 18]
    else:
        candidates = [n for n in range(19) if n != total]
    return str(rng.choice(candidates))


def _malformed(rng: random.Random, total: int) -> str:
    """A malformed answer with letters: a number word, the sum with junk around it, or letters."""
    kind = rng.randrange(3)
    if kind == 0:
        return _NUMBER_WORDS[total]
    if kind == 1:
        junk = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(1, 3)))
        return f"{total}{junk}" if rng.random() < 0.5 else f"{junk}{total}"
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 6)))


_RELATIVE_PATHS = {
    "tokenizer": Path("tokenizer"),
    "policy": Path("policy"),
    "reward": Path("reward"),
    "critic": Path("critic"),
    "data": Path("data"),
    **{
        name: Path("data") / f"{name}.jsonl"
        for name in (
            "prompts_train", "prompts_eval", "prompts_train_messages", "prompts_eval_messages",
            "sft_train", "sft_eval", "pref_train", "pref_eval",
        )
    },
}


def _paths(root: Path) -> dict[str, str]:
    paths = {name: str(root / rel) for name, rel in _RELATIVE_PATHS.items()}
    paths["root"] = str(root)
    paths["manifest"] = str(root / MANIFEST)
    return paths


def _read_manifest(root: Path, seed: int) -> dict | None:
    """The manifest of a complete build for this seed and format version, else None."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("seed") != seed or manifest.get("format_version") != FORMAT_VERSION:
        return None
    if not all((root / rel).exists() for rel in manifest.get("paths", {}).values()):
        return None
    return manifest


def _make_readable(root: Path) -> None:
    """Give the build ordinary permissions: mkdtemp (and some savers) create owner-only files."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _replace_dir(new: Path, out: Path, seed: int) -> None:
    """Move the finished build ``new`` to ``out``, setting aside whatever was there."""
    old = None
    if out.exists():
        if not any(out.iterdir()):
            out.rmdir()
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / out.name)
    try:
        os.rename(new, out)
    except OSError:
        # Another builder renamed its copy into place first; keep it if it is complete.
        if _read_manifest(out, seed) is None:
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="directory to write the assets into")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and data splits (default 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete build is there")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        paths = build_tiny_assets(args.out_dir, seed=args.seed, force=args.force)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(paths, indent=2))
    print(f"tiny assets ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
