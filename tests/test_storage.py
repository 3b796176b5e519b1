"""The storage layer on a local folder and on a real S3-compatible server (moto) on localhost."""

from __future__ import annotations

import pytest

from dynocc_data import storage
from dynocc_data.storage import StorageError

pytest_plugins = ["s3_server"]


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("s3_bucket") + "/run"


def test_write_read_list_remove_roundtrip(root):
    storage.makedirs(root)
    a, b = storage.join(root, "a.json"), storage.join(root, "b.txt")
    assert not storage.exists(a)
    storage.write_atomic(a, '{"x": 1}\n')
    storage.write_atomic(b, b"bytes")
    storage.write_atomic(a, '{"x": 2}\n')  # replaced whole
    assert storage.read_text(a) == '{"x": 2}\n'
    assert storage.read_bytes(b) == b"bytes"
    assert storage.list_names(root) == ["a.json", "b.txt"]
    storage.remove(a)
    assert storage.list_names(root) == ["b.txt"]
    storage.remove(a)  # missing is fine by default
    with pytest.raises(FileNotFoundError):
        storage.remove(a, missing_ok=False)


def test_read_limit_and_missing(root):
    storage.makedirs(root)
    url = storage.join(root, "big")
    storage.write_atomic(url, b"x" * 100)
    with pytest.raises(ValueError, match="larger than 10 bytes"):
        storage.read_bytes(url, max_bytes=10)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "absent"))
    assert storage.list_names(storage.join(root, "no-such-folder")) == []


def test_create_exclusive_has_one_winner(root):
    storage.makedirs(root)
    url = storage.join(root, "lease")
    assert storage.create_exclusive(url, "first") is True
    assert storage.create_exclusive(url, "second") is False
    assert storage.read_text(url) == "first"
    storage.remove(url)
    assert storage.create_exclusive(url, "third") is True
    assert storage.read_text(url) == "third"


def test_put_file_copies_whole(root, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 1000)
    storage.makedirs(root)
    url = storage.join(root, "copy.bin")
    storage.put_file(src, url)
    assert storage.read_bytes(url) == src.read_bytes()
    if storage.is_local(url):
        assert [n for n in storage.list_names(root) if n.endswith(storage.PARTIAL)] == []


def test_local_paths_and_urls():
    assert storage.local_path("/a/b") == "/a/b"
    assert storage.local_path("file:///a/b") == "/a/b"
    assert storage.local_path("s3://bucket/x") is None
    assert storage.join("s3://bucket/run/", "x.json") == "s3://bucket/run/x.json"
    with pytest.raises(StorageError, match="nosuchscheme://x: cannot be opened through fsspec"):
        storage.url_to_fs("nosuchscheme://x")


def test_open_read_and_get_file_copy_whole(root, tmp_path):
    storage.makedirs(root)
    url = storage.join(root, "data.bin")
    payload = bytes(range(256)) * 500
    storage.write_atomic(url, payload)
    with storage.open_read(url) as f:
        assert f.read(10) == payload[:10] and f.read() == payload[10:]
    storage.get_file(url, tmp_path / "got.bin")
    assert (tmp_path / "got.bin").read_bytes() == payload


def test_which_urls_are_stores_and_which_can_be_written(tmp_path):
    assert [storage.is_store(u) for u in ("s3://b/x", "memory://x", "gs://b/x")] == [True, True, True]
    assert [storage.is_store(u) for u in ("/a/b", "file:///a", "pipe:cat x", "https://h/x.tar")] == [False] * 4
    assert storage.check_url(f"file://{tmp_path}") == str(tmp_path)
    assert storage.check_url("memory://run") == "memory://run"
    for bad, why in (("pipe:cat", "not a folder that can be written"), ("https://h/run", "not a folder"),
                     ("nosuchscheme://b/run", "cannot be opened through fsspec")):
        with pytest.raises(StorageError, match=why):
            storage.check_url(bad)
