"""``python -m rlhf.run CONFIG --dry-run``: read and tokenize all data as the run would, without Ray.

Prints, for data.train and data.eval: the format (detected or set), rows read / examples /
rows skipped with the first reasons, prompt and response token-length percentiles with how many
exceed ``max_prompt_len`` / ``max_response_len`` (and what ``data.truncation`` does with them),
and the first example as the model sees it, the loss-masked (trained) part between ``⟦`` and
``⟧``. A bad row under ``on_error: raise`` (or a source with no usable row) raises `DataError`,
which the command line reports as a data error (exit 2), as a real run would.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

import numpy as np

from rlhf.config import RLHFConfig
from rlhf.data.datasets import (
    TokenizedDataset,
    load_preference_dataset,
    load_prompt_dataset,
    load_sft_dataset,
    load_unpaired_dataset,
)
from rlhf.data.stop_tokens import stop_token_ids
from rlhf.models.loading import load_tokenizer

# The loader of the data each algorithm trains on, from its config (a reward model's follows its objective);
# every other algorithm (PPO and the online ones) reads prompts.
LOADERS: dict[str, Callable[[RLHFConfig], Callable[..., TokenizedDataset]]] = {
    "sft": lambda cfg: load_sft_dataset,
    "dpo": lambda cfg: load_preference_dataset,
    "rm": lambda cfg: _rm_objective(cfg).loader,
    "kto": lambda cfg: load_unpaired_dataset,
}
# Response fields of each tokenized example type (prompt datasets have none).
_RESPONSES = ("response_ids", "chosen_ids", "rejected_ids")
_UNLIMITED = 10**9
MARK_OPEN, MARK_CLOSE = "⟦", "⟧"


def dry_run(cfg: RLHFConfig, out: TextIO | None = None) -> None:
    """Load every configured split the way ``cfg``'s algorithm will and print the report (to stdout)."""
    out = out or sys.stdout
    tokenizer = load_tokenizer(cfg.model.policy)
    loader = LOADERS.get(cfg.algorithm.name, lambda _: load_prompt_dataset)(cfg)
    splits = [("train", cfg.data.train, cfg.data)]
    if cfg.data.eval:
        splits.append(("eval", cfg.data.eval, cfg.data.model_copy(update={"max_samples": None})))
    for name, path, data_cfg in splits:
        data = loader(path, tokenizer, data_cfg)
        # The same rows without length limits: the lengths before truncation.
        full = loader(path, tokenizer, data_cfg.model_copy(update={
            "max_prompt_len": _UNLIMITED, "max_response_len": _UNLIMITED, "truncation": "error", "on_error": "skip"}))
        print(f"{name}: {path}", file=out)
        _report(data, full, data_cfg, tokenizer, out)
    stops = stop_token_ids(tokenizer, cfg.model.policy, cfg.data.apply_chat_template)
    print(f"stop tokens: {', '.join(f'{i} {tokenizer.convert_ids_to_tokens(i)!r}' for i in stops)}", file=out)
    print(f"dry run OK: algorithm {cfg.algorithm.name}, chat template {cfg.data.chat_template!r}", file=out)


def _rm_objective(cfg: RLHFConfig):
    from rlhf.drivers.rm import OBJECTIVES  # imported here: the driver imports Ray

    return OBJECTIVES[cfg.algorithm.rm.objective]


def _report(data: TokenizedDataset, full: TokenizedDataset, data_cfg, tokenizer, out: TextIO) -> None:
    how = "set by data.format" if data_cfg.format != "auto" else "detected"
    print(f"  format: {data.format} ({how})", file=out)
    print(f"  rows: {data.rows_read} read, {data.skipped} skipped; {len(data)} examples", file=out)
    for error in data.skip_reasons:
        print(f"    skipped row {error.row}: {error.reason}", file=out)
    prompts = [len(e.prompt_ids) for e in full]
    responses = [len(getattr(e, f)) for e in full for f in _RESPONSES if hasattr(e, f)]
    _lengths("prompt", prompts, data_cfg.max_prompt_len, data_cfg, out)
    if responses:
        _lengths("response", responses, data_cfg.max_response_len, data_cfg, out)
    print(f"  first example (the trained part between {MARK_OPEN} {MARK_CLOSE}):" if responses else "  first example:", file=out)
    print("    " + render_example(data[0], tokenizer).replace("\n", "\n    "), file=out)


def _lengths(what: str, lengths: list[int], limit: int, data_cfg, out: TextIO) -> None:
    p50, p90, p99 = (int(np.percentile(lengths, q, method="nearest")) for q in (50, 90, 99))
    over = sum(n > limit for n in lengths)
    action = {"error": "skipped" if data_cfg.on_error == "skip" else "an error", "left": "truncated", "right": "truncated"}
    note = f"; {over} over the limit {limit}: {action[data_cfg.truncation]} (data.truncation={data_cfg.truncation})" if over else \
        f"; none over the limit {limit}"
    print(f"  {what} tokens: p50 {p50}, p90 {p90}, p99 {p99}, max {max(lengths)}{note}", file=out)


def render_example(example, tokenizer) -> str:
    """The example's text with each response (the loss-masked part) between ⟦ and ⟧."""

    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    prompt = decode(example.prompt_ids)
    parts = []
    for name in _RESPONSES:
        ids = getattr(example, name, None)
        if ids is None:
            continue
        whole = decode(example.prompt_ids + ids)
        response = whole[len(prompt):] if whole.startswith(prompt) else decode(ids)
        label = name.removesuffix("_ids")
        parts.append(f"{label}: {prompt}{MARK_OPEN}{response}{MARK_CLOSE}")
    if hasattr(example, "desirable"):
        parts[-1] += f"  (label: {'desirable' if example.desirable else 'undesirable'})"
    if hasattr(example, "score"):
        parts[-1] += f"  (score: {example.score:g})"
    return "\n".join(parts) if parts else f"prompt: {prompt}"
