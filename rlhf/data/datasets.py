"""Loading tokenized prompt, SFT and preference datasets, and the resumable epoch sampler.

A loader reads rows (`readers`), normalises them (`formats`), tokenizes them (`tokenize`) and
returns a `TokenizedDataset`: a list of tokenized examples with ``source``, ``format``,
``rows_read`` and ``skipped``. The format is ``cfg.format``, or with ``"auto"`` is detected
from the first usable row and then required of every row. With ``cfg.on_error == "raise"``
the first bad row raises its `DataError` ("<file>: row <n>: <reason>"); with ``"skip"``
bad rows are counted and one warning is logged: "skipped N of M rows in <file> (first: row
r: reason)". A source with no usable row is always an error. At most ``cfg.max_samples``
examples are kept (reading stops there); for an eval set pass
``cfg.model_copy(update={"max_samples": None})`` if the limit is meant for training only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Callable

import numpy as np

from rlhf.config import DataConfig
from rlhf.data.errors import DataError
from rlhf.data.formats import (
    PREFERENCE_FORMATS,
    PROMPT_FORMATS,
    SFT_FORMATS,
    check_format,
    detect_format_for,
    to_preference_example,
    to_prompt_example,
    to_sft_example,
)
from rlhf.data.readers import read_rows
from rlhf.data.tokenize import check_tokenizer, tokenize_preference, tokenize_prompt, tokenize_sft

logger = logging.getLogger(__name__)


class TokenizedDataset(Sequence):
    """Tokenized examples of one source, plus what loading it found."""

    def __init__(self, examples: list, source: str, format: str, rows_read: int, skipped: int):
        self.examples = examples
        self.source = source
        self.format = format
        self.rows_read = rows_read
        self.skipped = skipped

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index):
        return self.examples[index]

    def __repr__(self) -> str:
        return f"TokenizedDataset({self.source!r}, format={self.format!r}, examples={len(self)}, skipped={self.skipped})"


def load_prompt_dataset(path: str | os.PathLike, tokenizer, cfg: DataConfig, *, split: str = "train") -> TokenizedDataset:
    """`TokenizedPrompt`s from a source of any format (PPO rollout prompts)."""
    return _load(path, tokenizer, cfg, split, "prompt", PROMPT_FORMATS, lambda row, fmt: tokenize_prompt(to_prompt_example(row, fmt), tokenizer, cfg))


def load_sft_dataset(path: str | os.PathLike, tokenizer, cfg: DataConfig, *, split: str = "train") -> TokenizedDataset:
    """`TokenizedSFT`s from prompt_completion or messages rows."""
    return _load(path, tokenizer, cfg, split, "SFT", SFT_FORMATS, lambda row, fmt: tokenize_sft(to_sft_example(row, fmt), tokenizer, cfg))


def load_preference_dataset(path: str | os.PathLike, tokenizer, cfg: DataConfig, *, split: str = "train") -> TokenizedDataset:
    """`TokenizedPreference`s from rows of a preference format (DPO, reward modelling)."""
    return _load(
        path, tokenizer, cfg, split, "preference", PREFERENCE_FORMATS,
        lambda row, fmt: tokenize_preference(to_preference_example(row, fmt), tokenizer, cfg),
    )


def _load(path, tokenizer, cfg: DataConfig, split: str, kind: str, allowed: tuple[str, ...],
          make: Callable[[dict, str], object]) -> TokenizedDataset:
    source = str(path)
    check_tokenizer(tokenizer, cfg)
    fmt = None
    if cfg.format != "auto":
        try:
            check_format(cfg.format, allowed, kind)
        except DataError as e:
            raise DataError(source, None, f"data.format: {e.reason}") from None
        fmt = cfg.format
    examples: list = []
    rows_read = skipped = 0
    first_error: DataError | None = None
    for number, row in read_rows(source, split, yield_errors=True):
        if cfg.max_samples is not None and len(examples) >= cfg.max_samples:
            break
        rows_read += 1
        try:
            if isinstance(row, DataError):
                raise row
            row_format = fmt or detect_format_for(row, allowed, kind)
            examples.append(make(row, row_format))
            fmt = row_format
        except DataError as e:
            located = e.located(source, number)
            if cfg.on_error == "raise":
                raise located from None
            skipped += 1
            first_error = first_error or located
    if skipped:
        logger.warning("skipped %d of %d rows in %s (first: row %s: %s)", skipped, rows_read, source, first_error.row, first_error.reason)
    if not examples:
        detail = f"all {rows_read} rows were skipped (first: row {first_error.row}: {first_error.reason})" if skipped else "it has no rows"
        raise DataError(source, None, f"no usable {kind} examples: {detail}")
    return TokenizedDataset(examples, source, fmt, rows_read, skipped)


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
