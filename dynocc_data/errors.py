"""Exceptions with one-line messages that name the file and the reason."""

from __future__ import annotations

import os


class DynOccError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(DynOccError):
    """A file given to the package cannot be used: ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{self.path}: {self.reason}")


class ShardFormatError(DynOccError):
    """A shard or a sample in it is malformed (names shard, key and field)."""

    def __init__(self, shard: str, key: str | None, reason: str):
        self.shard, self.key = shard, key
        self.reason = " ".join(str(reason).split())
        where = f"{shard}" + (f" [{key}]" if key else "")
        super().__init__(f"{where}: {self.reason}")


class ConfigError(DynOccError, ValueError):
    """An option has a value outside what it accepts: ``str(err)`` is ``"<option>: <reason>"``."""

    def __init__(self, option: str, reason: str):
        self.option = option
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{option}: {self.reason}")
