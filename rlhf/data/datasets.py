"""Loading tokenized prompt, SFT, preference, unpaired and scored datasets, and the resumable epoch sampler.

A loader reads rows (`readers`), renames columns (``cfg.columns``), normalises them
(`formats`), tokenizes them (`tokenize`) and returns a `TokenizedDataset`: a list of tokenized
examples with ``source``, ``format``, ``rows_read``, ``skipped`` and ``skip_reasons``. The
format is ``cfg.format``, or with ``"auto"`` is detected from the first row whose keys identify
one and then required of every row. With ``cfg.on_error == "raise"``
the first bad row raises its `DataError` ("<file>: row <n>: <reason>"); with ``"skip"``
bad rows are counted and one warning is logged: "skipped N of M rows in <file> (first: row
r: reason)". A source with no usable row is always an error. At most ``cfg.max_samples``
examples are kept (reading stops there); for an eval set pass
``cfg.model_copy(update={"max_samples": None})`` if the limit is meant for training only.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from typing import Callable

import numpy as np

from rlhf.config import DataConfig
from rlhf.data.errors import DataError
from rlhf.data.formats import FORMATS, check_format, detect_format, examples, map_columns
from rlhf.data.readers import read_rows
from rlhf.data.templates import use_chat_template
from rlhf.data.tokenize import (
    check_tokenizer,
    tokenize_preference,
    tokenize_prompt,
    tokenize_scored,
    tokenize_sft,
    tokenize_unpaired,
)

logger = logging.getLogger(__name__)

# How many skipped rows' reasons a dataset keeps (the first ones), for the log and --dry-run.
KEPT_SKIP_REASONS = 3


class TokenizedDataset(Sequence):
    """Tokenized examples of one source, plus what loading it found (``skip_reasons``: the
    first skipped rows' `DataError`s)."""

    def __init__(self, examples: list, source: str, format: str, rows_read: int, skipped: int,
                 skip_reasons: list[DataError] | None = None):
        self.examples = examples
        self.source = source
        self.format = format
        self.rows_read = rows_read
        self.skipped = skipped
        self.skip_reasons = skip_reasons or []

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index):
        return self.examples[index]

    def __repr__(self) -> str:
        return f"TokenizedDataset({self.source!r}, format={self.format!r}, examples={len(self)}, skipped={self.skipped})"


def load_prompt_dataset(path: str | os.PathLike, tokenizer, cfg: DataConfig, *, split: str = "train") -> TokenizedDataset:
    """`TokenizedPrompt`s from a source of any format (PPO rollout prompts)."""
    return _load(path, tokenizer, cfg, split, "prompt", tokenize_prompt)


def load_sft_dataset(path: str | os.PathLike, tokenizer, cfg: DataConfig, *, split: str = "train") -> TokenizedDataset:
    """`TokenizedSFT`s from rows of an SFT format."""
    return _load(path, tokenizer, cfg, split, "SFT", tokenize_sft)


def load_preference_dataset(path: str | os.PathLike, tokenizer, cfg: DataConfig, *, split: str = "train") -> TokenizedDataset:
    """`TokenizedPreference`s from rows of a preference format (DPO, reward modelling)."""
    return _load(path, tokenizer, cfg, split, "preference", tokenize_preference)


def load_unpaired_dataset(path: str | os.PathLike, tokenizer, cfg: DataConfig, *, split: str = "train") -> TokenizedDataset:
    """`TokenizedUnpaired`s (KTO) from unpaired rows, or from preference rows split into both labels."""
    return _load(path, tokenizer, cfg, split, "unpaired", tokenize_unpaired)


def load_scored_dataset(path: str | os.PathLike, tokenizer, cfg: DataConfig, *, split: str = "train") -> TokenizedDataset:
    """`TokenizedScored`s (reward-model regression) from rows of a scored format (HelpSteer)."""
    return _load(path, tokenizer, cfg, split, "scored", tokenize_scored)


def _load(path, tokenizer, cfg: DataConfig, split: str, kind: str, tokenize: Callable) -> TokenizedDataset:
    """Read, normalise and tokenize every row of ``path`` (see the module docstring).

    The chosen ``data.chat_template`` is given to ``tokenizer`` (in place) first. A row may make
    several examples (an oasst tree's paths, ranked responses' pairs); with a grouped format
    (HelpSteer pairs, and the unpaired examples split from them) consecutive rows sharing the group
    field make one unit. A unit's examples
    are kept or skipped together.
    """
    source = str(path)
    try:  # a tokenizer that cannot serve this config is a data error (one line, exit 2), not a traceback
        check_tokenizer(use_chat_template(tokenizer, cfg.chat_template), cfg)
    except ValueError as e:
        raise DataError(source, None, str(e)) from None
    fmt = None
    if cfg.format != "auto":
        try:
            check_format(cfg.format, kind)
        except DataError as e:
            raise DataError(source, None, f"data.format: {e.reason}") from None
        fmt = cfg.format
    kept: list = []
    rows_read = skipped = 0
    reasons: list[DataError] = []
    group: list[tuple[int, dict]] = []

    def reject(error: DataError, first_row: int, n_rows: int) -> None:
        nonlocal skipped
        located = error.located(source, first_row)
        if cfg.on_error == "raise":
            raise located from None
        skipped += n_rows
        if len(reasons) < KEPT_SKIP_REASONS:
            reasons.append(located)

    def add(first_row: int, n_rows: int, unit) -> None:
        try:
            kept.extend([tokenize(example, tokenizer, cfg) for example in examples(unit, fmt, kind, cfg)])
        except DataError as e:
            reject(e, first_row, n_rows)

    for number, row in read_rows(source, split, yield_errors=True):
        if cfg.max_samples is not None and len(kept) >= cfg.max_samples:
            break
        rows_read += 1
        try:
            if isinstance(row, DataError):
                raise row
            row = map_columns(row, cfg.columns)
            fmt = fmt or detect_format(row, kind)
        except DataError as e:
            reject(e, number, 1)
            continue
        key = FORMATS[fmt].grouped_by(kind)
        if key is None:
            add(number, 1, row)
            continue
        if group and group[0][1].get(key) != row.get(key):
            add(group[0][0], len(group), [r for _, r in group])
            group = []
        group.append((number, row))
    if group and (cfg.max_samples is None or len(kept) < cfg.max_samples):
        add(group[0][0], len(group), [r for _, r in group])
    if cfg.max_samples is not None:
        del kept[cfg.max_samples:]
    if skipped:
        first = reasons[0]
        logger.warning("skipped %d of %d rows in %s (first: row %s: %s)", skipped, rows_read, source, first.row, first.reason)
    if not kept:
        detail = (f"all {rows_read} rows were skipped (first: row {reasons[0].row}: {reasons[0].reason})" if skipped
                  else "it has no rows")
        raise DataError(source, None, f"no usable {kind} examples: {detail}")
    return TokenizedDataset(kept, source, fmt, rows_read, skipped, reasons)


class EpochSampler:
    """Batches of dataset indices, epoch after epoch, in a seeded order that survives a resume.

    Epoch e visits the indices in the permutation drawn by ``numpy.random.default_rng([seed, e])``
    (or in order when ``shuffle`` is false), ``batch_size`` at a time; with ``drop_last`` the
    ``n % batch_size`` indices left at the end of an epoch are not used in that epoch (another
    epoch's permutation puts others last). Iteration never ends: the caller stops after its
    number of steps or epochs (``epoch`` tells which epoch the next batch comes from).

    ``state_dict()`` records (epoch, position = batches already taken in that epoch) and the
    settings; ``load_state_dict`` restores them, so the resumed sampler yields exactly the
    batches the uninterrupted one would have. Resuming with different settings (n, batch size,
    seed, shuffle) would silently change the data order, so it raises ValueError instead.
    """

    _SETTINGS = ("n", "batch_size", "seed", "shuffle", "drop_last")

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if n < (batch_size if drop_last else 1):
            raise ValueError(f"dataset of {n} examples gives no batch of {batch_size}" + (" (drop_last)" if drop_last else ""))
        self.n, self.batch_size, self.seed, self.shuffle, self.drop_last = n, batch_size, seed, shuffle, drop_last
        self.epoch = 0
        self.position = 0
        self._order_epoch: int | None = None
        self._order: np.ndarray | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The index order of ``epoch``."""
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def visited_indices(self, steps: int) -> np.ndarray:
        """The distinct indices (ascending) of the first ``steps`` batches from the start of epoch 0, without
        moving the sampler: every index once the batches cover it, the visited prefix of a last partial epoch."""
        seen = np.zeros(self.n, dtype=bool)
        for epoch in itertools.count():
            if steps <= 0 or seen.all() or (epoch > 0 and not self.shuffle):  # unshuffled epochs all repeat epoch 0
                break
            take = min(steps, self.batches_per_epoch)
            seen[self.epoch_order(epoch)[: take * self.batch_size]] = True
            steps -= take
        return np.flatnonzero(seen)

    def __iter__(self) -> "EpochSampler":
        return self

    def __next__(self) -> list[int]:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        if self._order_epoch != self.epoch:
            self._order, self._order_epoch = self.epoch_order(self.epoch), self.epoch
        start = self.position * self.batch_size
        self.position += 1
        return self._order[start : start + self.batch_size].tolist()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, **{k: getattr(self, k) for k in self._SETTINGS}}

    def load_state_dict(self, state: dict) -> None:
        for key in self._SETTINGS:
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"cannot resume the data sampler: the checkpoint has {key}={state[key]!r}, this run has "
                                 f"{key}={getattr(self, key)!r}; resuming would change the data order")
        if not 0 <= state["position"] <= self.batches_per_epoch:
            raise ValueError(f"cannot resume the data sampler: position {state['position']} is outside an epoch "
                             f"of {self.batches_per_epoch} batches")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
