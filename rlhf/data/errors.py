"""`DataError`: one bad row of a dataset, reported as "<file>: row <n>: <reason>".

Row numbers are 1-based, the way a user counts them: in a .jsonl file the row
number is the line number (blank lines count as lines, so an editor's "go to
line" lands on the row); in a .json list, a parquet file or a `datasets`
directory it is the record's position, counting from 1.

Code that sees a row but not its file (format adapters, tokenization) raises
`DataError(None, None, reason)`; the loader that knows both adds them with
`located(source, row)`.
"""

from __future__ import annotations


class DataError(ValueError):
    """A dataset problem with its file (`source`), 1-based `row` (None: whole file) and `reason`."""

    def __init__(self, source: str | None, row: int | None, reason: str):
        self.source = None if source is None else str(source)
        self.row = row
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        parts = [p for p in (self.source, None if self.row is None else f"row {self.row}") if p is not None]
        return ": ".join(parts + [self.reason])

    def located(self, source: str, row: int | None) -> "DataError":
        """This error with the file and row filled in (those already set are kept)."""
        return DataError(self.source or source, self.row if self.row is not None else row, self.reason)

    def __reduce__(self):  # picklable across Ray processes despite the 3-argument constructor
        return (DataError, (self.source, self.row, self.reason))
