"""Exceptions with one-line messages that name the file and the reason.

Each also subclasses the standard exception a caller would catch for the same failure elsewhere (as with
torchvision's datasets): a missing file is a :class:`FileNotFoundError`, an unusable file or option a
:class:`ValueError`, so ``except FileNotFoundError`` or ``except ValueError`` work as usual.
"""

from __future__ import annotations

import os

__all__ = ["ConfigError", "DynOccError", "InputError", "InputNotFoundError", "ShardFormatError"]


class DynOccError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(DynOccError, ValueError):
    """A file given to the package cannot be used: ``str(err)`` is ``"<path>: <reason>"``.

    Args:
        path: the file (or URL) at fault.
        reason: why it cannot be used; folded into one line.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        """Keep ``path`` and ``reason`` and build the one-line message."""
        self.path = os.fspath(path)
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{self.path}: {self.reason}")


class InputNotFoundError(InputError, FileNotFoundError):
    """An input file or folder does not exist (an :class:`InputError` and a :class:`FileNotFoundError`)."""


class ShardFormatError(DynOccError, ValueError):
    """A shard or a sample in it is malformed (names shard, key and field).

    Args:
        shard: the shard's URL or path.
        key: the sample's key, ``None`` for the shard as a whole.
        reason: what is wrong; folded into one line.
    """

    def __init__(self, shard: str, key: str | None, reason: str):
        """Keep the parts and build the one-line message."""
        self.shard, self.key = shard, key
        self.reason = " ".join(str(reason).split())
        where = f"{shard}" + (f" [{key}]" if key else "")
        super().__init__(f"{where}: {self.reason}")


class ConfigError(DynOccError, ValueError):
    """An option has a value outside what it accepts: ``str(err)`` is ``"<option>: <reason>"``.

    Args:
        option: the option's name (a config field or a command-line flag).
        reason: what it accepts and what it got; folded into one line.
    """

    def __init__(self, option: str, reason: str):
        """Keep the parts and build the one-line message."""
        self.option = option
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{option}: {self.reason}")
