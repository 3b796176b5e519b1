"""Storage: every file the package writes or reads for coordination, addressed by path or fsspec URL.

Plain paths and ``file://`` URLs are the local file system (atomic renames, ``fsync``, ``O_EXCL``); any other
scheme fsspec knows (``s3://``, ``gs://``, ``memory://``) is an object store, where a single ``put`` appears whole
or not at all. This layer knows nothing of shards or samples: ``format/`` says what the bytes mean.
"""

from .cache import ShardCache, parse_size
from .fs import (
    PARTIAL,
    StorageError,
    atomic_write_text,
    check_url,
    create_exclusive,
    exists,
    fsync_dir,
    get_file,
    is_local,
    is_store,
    join,
    list_names,
    local_path,
    makedirs,
    open_read,
    put_file,
    read_bytes,
    read_text,
    remove,
    url_to_fs,
    write_atomic,
)

__all__ = ["PARTIAL", "ShardCache", "StorageError", "atomic_write_text", "check_url", "create_exclusive", "exists",
           "fsync_dir", "get_file", "is_local", "is_store", "join", "list_names", "local_path", "makedirs",
           "open_read", "parse_size", "put_file", "read_bytes", "read_text", "remove", "url_to_fs", "write_atomic"]
