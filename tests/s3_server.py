"""A real S3-compatible server (moto's server mode) on localhost for the storage tests.

Tests that use it get a fresh bucket and fsspec storage options pointing at the server; nothing is mocked on the
client side: s3fs talks HTTP to a real server process thread.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Start moto's S3 server on a free localhost port for the session; yield its endpoint URL."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[test]')")
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[test]')")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # subprocesses (CLI runs, workers) reach the same server through the same variables
    try:
        yield endpoint
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture()
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the local server; yields its ``s3://`` URL."""
    import fsspec  # noqa: PLC0415 - after the server's variables are set

    name = f"test-{uuid.uuid4().hex[:12]}"
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(name)
    fsspec.filesystem("s3").invalidate_cache()
    return f"s3://{name}"
