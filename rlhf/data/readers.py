"""Reading raw rows (dicts) from a dataset source, each with its 1-based row number.

Sources, chosen by what the path is:

- ``*.jsonl``: one JSON object per line; the row number is the line number (blank lines
  are skipped but still counted, so the number is what an editor shows).
- ``*.json``: a list of objects, or ``{"data": [...]}``; row n is the n-th object. A
  ``.json`` file that is really JSON lines (several top-level values) is read as JSON lines.
- ``*.parquet``: row n is the n-th record.
- a directory written by ``datasets``' ``save_to_disk``: a ``Dataset``, or a ``DatasetDict``
  from which the ``split`` argument's split is read (``"train"`` unless the caller asks for
  another). Row n is the n-th record.
- anything else that does not exist locally and looks like a hub name (``org/name``, no file
  extension) is loaded with ``datasets.load_dataset(name, split=split)``; that needs a reachable
  hub, and when the load fails the error says both that the path does not exist locally and why
  the hub load failed.

Problems with the whole source (missing, unreadable, wrong layout) raise `DataError` at once.
A row that cannot be read (invalid JSON, not an object) raises too, or with
``yield_errors=True`` is yielded as ``(row, DataError)`` so that a caller skipping bad rows can
go on reading.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator, Union

from rlhf.data.errors import DataError

FILE_TYPES = (".jsonl", ".json", ".parquet")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

Row = Union[dict, DataError]


def read_rows(source: str | os.PathLike, split: str = "train", *, yield_errors: bool = False) -> Iterator[tuple[int, Row]]:
    """Yield ``(row_number, row_dict)`` for every row of ``source`` (see the module docstring).

    Row numbers start at 1. With ``yield_errors``, an unreadable row comes as ``(row, DataError)``
    instead of stopping the iteration.
    """
    rows = _rows(str(source), split)
    for number, row in rows:
        if isinstance(row, DataError) and not yield_errors:
            raise row
        yield number, row


def _rows(source: str, split: str) -> Iterator[tuple[int, Row]]:
    path = Path(source)
    if path.is_dir():
        return _saved_dataset_rows(source, split)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return _jsonl_rows(source)
        if suffix == ".json":
            return _json_rows(source)
        if suffix == ".parquet":
            return _parquet_rows(source)
        raise DataError(source, None, f"unsupported file type {suffix or '(none)'!r}; expected one of {', '.join(FILE_TYPES)}, "
                        "a datasets.save_to_disk directory or a hub dataset name")
    if path.exists():
        raise DataError(source, None, "not a regular file or directory")
    if path.suffix.lower() in FILE_TYPES or not _HUB_NAME.match(source):
        raise DataError(source, None, "path does not exist")
    return _hub_rows(source, split)


def _object_or_error(source: str, number: int, value) -> Row:
    if isinstance(value, dict):
        return value
    return DataError(source, number, f"expected a JSON object, got {type(value).__name__}")


def _jsonl_rows(source: str) -> Iterator[tuple[int, Row]]:
    with open(source, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield number, DataError(source, number, f"not UTF-8 text ({e.reason} at byte {e.start})")
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                yield number, DataError(source, number, f"invalid JSON: {e.msg} (column {e.colno})")
                continue
            yield number, _object_or_error(source, number, value)


def _json_rows(source: str) -> Iterator[tuple[int, Row]]:
    try:
        text = Path(source).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(source, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: JSON lines under a .json name
            return _jsonl_rows(source)
        raise DataError(source, None, f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(source, None, 'expected a list of objects or {"data": [...]} at the top level, '
                        f"got {type(data).__name__}" + (f" with keys {sorted(data)}" if isinstance(data, dict) else ""))
    return ((number, _object_or_error(source, number, value)) for number, value in enumerate(data, start=1))


def _parquet_rows(source: str) -> Iterator[tuple[int, Row]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source)
    except (pa.ArrowException, OSError) as e:
        raise DataError(source, None, f"not a readable parquet file: {e}") from None

    def rows():
        number = 0
        for batch in parquet.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield number, row

    return rows()


def _saved_dataset_rows(source: str, split: str) -> Iterator[tuple[int, Row]]:
    import datasets

    path = Path(source)
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise DataError(source, None, "is a directory but not a datasets.save_to_disk directory "
                        "(no dataset_dict.json or state.json in it)")
    try:
        data = datasets.load_from_disk(source)
    except Exception as e:  # datasets raises many types for a damaged directory
        raise DataError(source, None, f"datasets.load_from_disk failed: {type(e).__name__}: {e}") from None
    return _dataset_rows(_pick_split(source, data, split))


def _hub_rows(source: str, split: str) -> Iterator[tuple[int, Row]]:
    import datasets

    try:
        data = datasets.load_dataset(source, split=split)
    except Exception as e:  # no network, unknown name, missing split, ...
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise DataError(source, None, "path does not exist locally, and loading it as a Hugging Face hub dataset "
                        f"failed: {type(e).__name__}: {first_line}") from None
    return _dataset_rows(_pick_split(source, data, split))


def _pick_split(source: str, data, split: str):
    import datasets

    if isinstance(data, (datasets.DatasetDict, dict)):
        if split not in data:
            raise DataError(source, None, f"has no split {split!r}; splits: {', '.join(sorted(data))}")
        return data[split]
    return data


def _dataset_rows(dataset) -> Iterator[tuple[int, Row]]:
    return enumerate(dataset, start=1)
