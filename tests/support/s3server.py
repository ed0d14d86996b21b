"""moto's S3 in server mode on a free loopback port: the real HTTP API boto3 talks to, in
this process's threads. Test packages wrap it in the fixtures they need."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .envtest import free_port

# What boto3 needs besides the endpoint; moto accepts any credentials.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def running_moto() -> Iterator[str]:
    """The server's endpoint URL while it runs."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
