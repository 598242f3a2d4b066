"""Tiny local assets for the CPU demos and tests (there is no model hub here), in several model families.

``python -m rlhf.tiny OUTDIR [--family NAME] [--seed N] [--force]`` writes, in a few seconds and
deterministically for a given seed, a tokenizer, a 2-layer policy, a reward model and a value
model on the same backbone, and the toy datasets of the single-digit addition task (layout in
`rlhf.tiny.builder`). The families (one module each) are shaped like the checkpoints people train:

- ``char`` (`rlhf.tiny.char`): a character tokenizer with its own pad token, one EOS, untied Llama;
- ``llama3`` (`rlhf.tiny.llama3`): byte-level BPE, no pad, BOS, two EOS ids, header template, tied;
- ``qwen2`` (`rlhf.tiny.qwen2`): pad differs from the chat EOS, ChatML, q/k/v bias, tied;
- ``mistral`` (`rlhf.tiny.mistral`): SentencePiece-style BPE, no pad, ``[INST]``, sliding window, untied.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from rlhf.tiny import char, llama3, mistral, qwen2
from rlhf.tiny.builder import build
from rlhf.tiny.char import CHARACTERS, SPECIAL_TOKENS, build_tokenizer  # noqa: F401  (the char family's API)

_FAMILIES = {f.name: f for f in (char.FAMILY, llama3.FAMILY, qwen2.FAMILY, mistral.FAMILY)}
FAMILIES = tuple(_FAMILIES)


def build_tiny_assets(out_dir: str | os.PathLike, seed: int = 0, force: bool = False, family: str = "char") -> dict[str, str]:
    """Build ``family``'s tiny assets into ``out_dir`` (reused when complete); ``{name: absolute path}``."""
    if family not in _FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; valid: {', '.join(FAMILIES)}")
    return build(out_dir, seed, force, _FAMILIES[family])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="directory to write the assets into")
    parser.add_argument("--family", choices=FAMILIES, default="char", help="model family (default char)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and data splits (default 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete build is there")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        paths = build_tiny_assets(args.out_dir, seed=args.seed, force=args.force, family=args.family)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(paths, indent=2))
    print(f"tiny assets ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0
