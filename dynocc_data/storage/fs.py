"""Small-file operations on local paths and fsspec URLs, crash-safe on both.

Local paths get the POSIX guarantees directly (a temporary file, ``fsync``, ``os.replace``; ``O_EXCL`` for
exclusive creation) because fsspec's local file system does not fsync or rename atomically. Remote URLs go through
fsspec: an object store shows a ``put`` whole or not at all, so a single put is already atomic there.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import fsspec

from ..errors import DynOccError

__all__ = ["PARTIAL", "StorageError", "atomic_write_text", "check_url", "create_exclusive", "exists", "fsync_dir",
           "get_file", "is_local", "is_store", "join", "list_names", "local_path", "makedirs", "open_read", "put_file",
           "read_bytes", "read_text", "remove", "url_to_fs", "write_atomic"]

PARTIAL = ".partial"  # suffix of every local file still being written
_STREAM_SCHEMES = ("pipe", "http", "https")  # read by webdataset's gopen (a shell command, curl), not by fsspec


class StorageError(DynOccError, OSError):
    """A storage operation failed: ``str(err)`` is ``"<url>: <reason>"`` (also an :class:`OSError`).

    Args:
        url: the path or URL at fault.
        reason: what went wrong; folded into one line.
    """

    def __init__(self, url: str, reason: str):
        """Keep ``url`` and ``reason`` and build the one-line message."""
        self.url = url
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{url}: {self.reason}")


def local_path(url: str | os.PathLike) -> str | None:
    """The file-system path of a local path or ``file:`` URL.

    Args:
        url: a plain path, a ``file:`` URL, or any other URL.

    Returns:
        The path for a plain path or a ``file:`` URL; ``None`` for remote and ``pipe:`` URLs.
    """
    url = os.fspath(url)
    parsed = urlparse(url)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return url
    if parsed.scheme == "file":
        return url2pathname(parsed.path)
    return None


def is_local(url: str | os.PathLike) -> bool:
    """True for a plain path or a ``file:`` URL.

    Args:
        url: the path or URL.

    Returns:
        Whether the local file system holds it.
    """
    return local_path(url) is not None


def is_store(url: str | os.PathLike) -> bool:
    """True for a URL of an fsspec file system other than the local one (``s3://``, ``gs://``, ``memory://``).

    Args:
        url: the path or URL.

    Returns:
        False for plain paths, ``file:`` URLs, ``pipe:`` commands and ``http(s)://`` URLs (which webdataset's
        ``gopen`` reads through a shell or ``curl``); True for any other ``scheme://`` URL.
    """
    url = os.fspath(url)
    return not is_local(url) and "://" in url and urlparse(url).scheme not in _STREAM_SCHEMES


def check_url(url: str | os.PathLike) -> str:
    """Check that a folder URL can be written through storage, before any work starts.

    Args:
        url: a local path, a ``file:`` URL or an fsspec URL.

    Returns:
        A plain path for local ones (``file:`` URLs become paths), the URL unchanged otherwise.

    Raises:
        StorageError: for ``pipe:`` and ``http(s)`` URLs (read-only here) and schemes without an installed fsspec
            back end (e.g. ``s3://`` without ``s3fs``).
    """
    text = os.fspath(url)
    path = local_path(text)
    if path is not None:
        return path
    if not is_store(text):
        raise StorageError(text, "not a folder that can be written (use a path or an fsspec URL such as "
                                 "s3://bucket/prefix)")
    url_to_fs(text)
    return text


def url_to_fs(url: str | os.PathLike) -> tuple[Any, str]:
    """The fsspec file system and the path inside it for ``url``.

    Args:
        url: a path or a URL with any scheme fsspec knows (its optional back ends, such as ``s3fs``, installed).

    Returns:
        ``(fs, path)``.

    Raises:
        StorageError: when no installed fsspec back end serves the URL's scheme.
    """
    url = os.fspath(url)
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise StorageError(url, f"cannot be opened through fsspec ({err})") from None


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join names onto a folder path or URL with ``/`` (``os.path.join`` for local paths).

    Args:
        base: the folder.
        *parts: names below it.

    Returns:
        The joined path or URL, of the same kind as ``base``.
    """
    base = os.fspath(base)
    if urlparse(base).scheme in ("", "file") and "://" not in base:
        return os.path.join(base, *parts)
    return posixpath.join(base.rstrip("/"), *parts)


def exists(url: str | os.PathLike) -> bool:
    """True when the file or folder exists.

    Args:
        url: the path or URL.

    Returns:
        Whether it exists.
    """
    path = local_path(url)
    if path is not None:
        return os.path.exists(path)
    fs, inner = url_to_fs(url)
    return bool(fs.exists(inner))


def makedirs(url: str | os.PathLike) -> None:
    """Create a folder and its parents (nothing to do on object stores, where folders are prefixes).

    Args:
        url: the folder.
    """
    path = local_path(url)
    if path is not None:
        os.makedirs(path, exist_ok=True)
        return
    fs, inner = url_to_fs(url)
    fs.makedirs(inner, exist_ok=True)


def read_bytes(url: str | os.PathLike, *, max_bytes: int | None = None) -> bytes:
    """Read a whole (small) file.

    Args:
        url: the path or URL.
        max_bytes: the most it may hold; ``None`` for no limit.

    Returns:
        The bytes.

    Raises:
        FileNotFoundError: when it does not exist.
        ValueError: when it holds more than ``max_bytes``.
    """
    limit = -1 if max_bytes is None else max_bytes + 1
    path = local_path(url)
    if path is not None:
        with open(path, "rb") as f:
            data = f.read(limit)
    else:
        fs, inner = url_to_fs(url)
        with fs.open(inner, "rb") as f:
            data = f.read(limit)
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    return data


def read_text(url: str | os.PathLike, *, max_bytes: int | None = None) -> str:
    """Read a whole (small) UTF-8 text file.

    Args:
        url: the path or URL.
        max_bytes: the most it may hold; ``None`` for no limit.

    Returns:
        The text.
    """
    return read_bytes(url, max_bytes=max_bytes).decode("utf-8")


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries to disk, so that a rename into it survives a crash; best effort.

    Args:
        path: the folder. Where it cannot be opened or synced (some file systems, Windows) nothing happens.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _local_atomic_write(path: str, data: bytes) -> None:
    tmp = Path(path).with_name(Path(path).name + f".{os.getpid()}{PARTIAL}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(url: str | os.PathLike, data: bytes | str) -> None:
    """Write a whole file so that readers see the old contents or the new ones, never a part.

    Args:
        url: the final path or URL. Locally the temporary file is next to it, named ``<name>.<pid>.partial``,
            fsynced before the rename and removed when writing fails; on an object store it is one ``put``.
        data: the contents; text is written as UTF-8.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    path = local_path(url)
    if path is not None:
        _local_atomic_write(path, payload)
        return
    fs, inner = url_to_fs(url)
    fs.pipe_file(inner, payload)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`write_atomic`).

    Args:
        path: the final path or URL.
        text: the contents, written as UTF-8.
    """
    write_atomic(path, text)


def create_exclusive(url: str | os.PathLike, data: bytes | str) -> bool:
    """Create a file only when it does not exist yet; exactly one of several racing callers wins.

    Locally this is ``O_CREAT | O_EXCL`` (written through a temporary file and a hard link, so a reader never sees
    a part). On an object store it is a conditional put (``If-None-Match: *``, which S3, GCS and Azure honour); a
    store that refuses conditional puts raises rather than silently letting two callers win.

    Args:
        url: the path or URL to create.
        data: the contents.

    Returns:
        True when this call created it, False when it already existed.

    Raises:
        StorageError: when the store cannot create files exclusively.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    path = local_path(url)
    if path is not None:
        tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex}{PARTIAL}"
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, fails when the name exists: O_EXCL with the contents already in place
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    fs, inner = url_to_fs(url)
    try:
        fs.pipe_file(inner, payload, mode="create")
    except FileExistsError:
        return False
    except TypeError as err:  # a back end without the mode argument: it cannot say who won
        raise StorageError(os.fspath(url), f"this store cannot create files exclusively ({err})") from None
    return True


def list_names(url: str | os.PathLike) -> list[str]:
    """The names of the files directly inside a folder, sorted (empty when it does not exist).

    Args:
        url: the folder.

    Returns:
        File names (not paths), sorted.
    """
    path = local_path(url)
    if path is not None:
        try:
            with os.scandir(path) as entries:
                return sorted(e.name for e in entries if e.is_file())
        except FileNotFoundError:
            return []
    fs, inner = url_to_fs(url)
    try:
        found = fs.ls(inner, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(e["name"].rstrip("/")) for e in found if e.get("type") == "file")


def remove(url: str | os.PathLike, *, missing_ok: bool = True) -> None:
    """Delete a file.

    Args:
        url: the path or URL.
        missing_ok: do nothing when it does not exist.

    Raises:
        FileNotFoundError: when it does not exist and ``missing_ok`` is False.
    """
    path = local_path(url)
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            if not missing_ok:
                raise
        return
    fs, inner = url_to_fs(url)
    if not missing_ok and not fs.exists(inner):  # object stores answer a delete of nothing with success
        raise FileNotFoundError(os.fspath(url))
    try:
        fs.rm_file(inner)
    except FileNotFoundError:
        if not missing_ok:
            raise


def open_read(url: str | os.PathLike) -> Any:
    """Open a file for streaming reads.

    Args:
        url: a local path or an fsspec URL.

    Returns:
        A binary file object (close it, or use it as a context manager).
    """
    path = local_path(url)
    if path is not None:
        return open(path, "rb")
    fs, inner = url_to_fs(url)
    return fs.open(inner, "rb")


def get_file(url: str | os.PathLike, local: str | os.PathLike) -> None:
    """Download a whole file to a local path (which the caller renames into place).

    Args:
        url: the path or URL to copy.
        local: the local file to write.
    """
    path = local_path(url)
    if path is not None:
        with open(path, "rb") as src, open(local, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        return
    fs, inner = url_to_fs(url)
    fs.get_file(inner, os.fspath(local))


def put_file(local: str | os.PathLike, url: str | os.PathLike) -> None:
    """Copy a finished local file to ``url`` as one whole (a rename locally when on the same file system).

    Args:
        local: the file to copy.
        url: where it goes; locally a temporary name and a rename, remotely one upload.
    """
    path = local_path(url)
    if path is not None:
        tmp = f"{path}.{os.getpid()}{PARTIAL}"
        try:
            with open(local, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    fs, inner = url_to_fs(url)
    fs.put_file(os.fspath(local), inner)
