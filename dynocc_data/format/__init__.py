"""The on-disk format of docs/FORMAT.md, and the only code that knows it.

* :mod:`.sample` — one shard sample: :func:`encode_sample` (writer side), :func:`decode_sample` (reader side);
* :mod:`.index` — ``index.json``: :func:`index_document` to write, :func:`load_index` / :func:`read_index` to read;
* :mod:`.tar` — the lean tar reader the datasets use in place of ``tarfile`` (faster on small members);
* :mod:`.files` — crash-safe small-file writes.

Both sides of the item contract build on this package: :mod:`dynocc_data.generation` writes it,
:mod:`dynocc_data.datasets` reads it; neither imports the other.
"""

from .files import PARTIAL, atomic_write_text
from .index import INDEX_FORMAT, INDEX_NAME, ShardInfo, index_document, load_index, read_index
from .sample import (
    BOUNDARY_DTYPE,
    BOUNDARY_FIELDS,
    REQUIRED_FIELDS,
    MissingFieldError,
    boundary_from_array,
    boundary_to_array,
    decode_image_member,
    decode_sample,
    encode_sample,
)
from .tar import iter_tar_members

__all__ = [
    "BOUNDARY_DTYPE", "BOUNDARY_FIELDS", "INDEX_FORMAT", "INDEX_NAME", "PARTIAL", "REQUIRED_FIELDS",
    "MissingFieldError", "ShardInfo", "atomic_write_text", "boundary_from_array", "boundary_to_array",
    "decode_image_member", "decode_sample", "encode_sample", "index_document", "iter_tar_members", "load_index",
    "read_index",
]
