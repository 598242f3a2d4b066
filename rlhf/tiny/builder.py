"""Building one family's tiny assets into a directory: tokenizer, policy, reward, critic, data, manifest.

The layout (every family the same)::

    OUTDIR/
      manifest.json        paths (relative to OUTDIR), seed, format version (and family, except "char")
      tokenizer/           the family's tokenizer with its chat template
      policy/              <Arch>ForCausalLM, random init, + tokenizer + generation_config.json
      reward/              <Arch>ForSequenceClassification (num_labels=1) + tokenizer
      critic/              <Arch>ForTokenClassification (num_labels=1, a value per token) + tokenizer
      data/                jsonl splits of the single-digit addition task (rlhf.tiny.data)

Everything is saved in Hugging Face format, so plain ``transformers`` Auto classes and vLLM
load it the normal way. The "char" manifest keeps its original form (no family key), so the
char assets stay byte-identical to the first version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from rlhf.tiny.data import SPLITS, write_data
from rlhf.tiny.family import Family

# Bump when the content or layout of the assets changes, so stale directories rebuild.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_HEADS = [("policy", "ForCausalLM", {}), ("reward", "ForSequenceClassification", {"num_labels": 1}),
          ("critic", "ForTokenClassification", {"num_labels": 1})]
_RELATIVE_PATHS = {
    "tokenizer": Path("tokenizer"),
    "policy": Path("policy"),
    "reward": Path("reward"),
    "critic": Path("critic"),
    "data": Path("data"),
    **{name: Path("data") / f"{name}.jsonl" for name in SPLITS},
}


def build(out_dir: str | os.PathLike, seed: int, force: bool, family: Family) -> dict[str, str]:
    """Build ``family``'s assets into ``out_dir`` and return ``{name: absolute path}``.

    Returns at once when ``out_dir`` already holds a complete build for this family, seed and
    format version (unless ``force``). The build goes to a temporary sibling directory renamed
    into place at the end, so a half-built directory is never mistaken for a complete one, and
    concurrent builders of the same ``out_dir`` and seed end with one complete build.
    """
    out = Path(out_dir).resolve()
    if not force and _read_manifest(out, seed, family.name) is not None:
        return _paths(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists() and not force:
        raise FileExistsError(f"{out} is not empty and holds no {MANIFEST}; pass force=True (--force) to replace it")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        _build_into(tmp, seed, family)
        # Another builder may have finished meanwhile: keep its identical build.
        if force or _read_manifest(out, seed, family.name) is None:
            _replace_dir(tmp, out, seed, family.name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _paths(out)


def _build_into(root: Path, seed: int, family: Family) -> None:
    import torch
    from transformers import GenerationConfig

    tokenizer = family.build_tokenizer(root / "tokenizer")

    # Distinct seeds per model, forked so the caller's RNG state is left alone.
    with torch.random.fork_rng(devices=[]):
        for offset, (name, head, extra) in enumerate(_HEADS):
            torch.manual_seed(seed * 1000 + offset)
            model = family.model_class(head)(family.model_config(tokenizer, **extra)).to(torch.float32).eval()
            model.save_pretrained(root / name)
            tokenizer.save_pretrained(root / name)
            if name == "policy":
                GenerationConfig(**family.generation_config(tokenizer)).save_pretrained(root / name)

    write_data(root / "data", seed)
    _make_readable(root)
    manifest = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        **({} if family.name == "char" else {"family": family.name}),
        "vocab_size": len(tokenizer),
        "paths": {name: str(rel) for name, rel in _RELATIVE_PATHS.items()},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _paths(root: Path) -> dict[str, str]:
    paths = {name: str(root / rel) for name, rel in _RELATIVE_PATHS.items()}
    paths["root"] = str(root)
    paths["manifest"] = str(root / MANIFEST)
    return paths


def _read_manifest(root: Path, seed: int, family: str) -> dict | None:
    """The manifest of a complete build for this family, seed and format version, else None."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if (manifest.get("seed"), manifest.get("format_version"), manifest.get("family", "char")) != (seed, FORMAT_VERSION, family):
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


def _replace_dir(new: Path, out: Path, seed: int, family: str) -> None:
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
        if _read_manifest(out, seed, family) is None:
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
