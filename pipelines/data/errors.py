"""One error type for bad input, so every reader fails with a message that names the file or key."""

from __future__ import annotations

from pathlib import Path

from pipelines.errors import PipelinesError


class DataError(PipelinesError, ValueError):
    """Input data is missing, corrupt or malformed; the message names the file and the problem."""


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return `path` as a Path, or raise FileNotFoundError naming it (and what it was meant to be)."""
    path = Path(path)
    if not path.is_file():
        hint = " (it is a directory)" if path.is_dir() else ""
        raise FileNotFoundError(f"{what} not found: {path}{hint}")
    return path
