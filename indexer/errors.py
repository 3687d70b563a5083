"""Exceptions the whole system shares; the CLI prints them as one line, without a traceback."""

from __future__ import annotations

import os


class PixdexError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ModelMismatchError(PixdexError):
    """A store built with one model was asked to work with another."""


class StoreDamaged(PixdexError):
    """A file of a store is missing, truncated or not what the manifest recorded: names the file and why."""

    def __init__(self, path: str | os.PathLike, reason: str, store: str | os.PathLike | None = None):
        self.path, self.reason, self.store = str(path), reason, None if store is None else str(store)
        hint = f"; `pixdex repair {self.store}` rebuilds what it can" if self.store else ""
        self.message = f"damaged store file {self.path}: {reason}{hint}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class StoreFileMissing(StoreDamaged, FileNotFoundError):
    """A file the manifest names is gone (also a FileNotFoundError: readers of an old snapshot retry)."""

    def __init__(self, path: str | os.PathLike, store: str | os.PathLike | None = None):
        super().__init__(path, "missing", store)


class StoreWriteError(PixdexError, OSError):
    """A store file could not be written (disk full, read-only, permissions); the last commit is intact."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class InvalidValue(PixdexError, ValueError):
    """An argument of the right kind with a value that is not allowed
    (Python callers may catch ValueError)."""


class InvalidType(PixdexError, TypeError):
    """An argument of the wrong type (Python callers may catch TypeError)."""


class LimitExceeded(InvalidValue):
    """A request over a configured bound (too many labels, ids, characters); the server answers 413."""
