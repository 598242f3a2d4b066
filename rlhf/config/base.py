"""What every config section shares: the error type, the strict base model, "did you mean" hints."""

from __future__ import annotations

import difflib

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A config problem, reported to the user as one line."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def suggest(word: str, options) -> str:
    """' (did you mean X?)' for the closest of ``options``, or ''."""
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
