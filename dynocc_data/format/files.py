"""Crash-safe small-file writes shared by the writer and the tools (never a half-written file under a final name).

The one home of these operations is :mod:`dynocc_data.storage` (local paths and fsspec URLs alike); this module
keeps the names the format side has always used.
"""

from __future__ import annotations

from ..storage.fs import PARTIAL, atomic_write_text, fsync_dir

__all__ = ["PARTIAL", "atomic_write_text", "fsync_dir"]
