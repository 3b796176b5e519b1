"""Storage: every file the package writes or reads for coordination, addressed by path or fsspec URL.

Plain paths and ``file://`` URLs are the local file system (atomic renames, ``fsync``, ``O_EXCL``); any other
scheme fsspec knows (``s3://``, ``gs://``, ``memory://``) is an object store, where a single ``put`` appears whole
or not at all. This layer knows nothing of shards or samples: ``format/`` says what the bytes mean.
"""

from .fs import (
    PARTIAL,
    StorageError,
    atomic_write_text,
    create_exclusive,
    exists,
    fsync_dir,
    is_local,
    join,
    list_names,
    local_path,
    makedirs,
    put_file,
    read_bytes,
    read_text,
    remove,
    url_to_fs,
    write_atomic,
)

__all__ = ["PARTIAL", "StorageError", "atomic_write_text", "create_exclusive", "exists", "fsync_dir", "is_local",
           "join", "list_names", "local_path", "makedirs", "put_file", "read_bytes", "read_text", "remove",
           "url_to_fs", "write_atomic"]
