"""Errors that become HTTP answers, and the one place their bodies and headers are built.

The SageMaker routes answer `{"error": {"code": N, "message": "..."}}`; the Open Inference
Protocol routes (`/v2/...`) answer `{"error": "message"}`, the shape tritonclient reads.
"""

from __future__ import annotations

import orjson


class HTTPError(Exception):
    """An error with the status code the client gets; the message is safe to show."""

    def __init__(self, code: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


def bad_request(message: str) -> HTTPError:
    return HTTPError(400, message)


def not_ready(message: str = "model is not ready") -> HTTPError:
    return HTTPError(503, message, retry_after=1)


def is_v2_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_body(error: HTTPError, v2: bool) -> bytes:
    """The JSON body of an error answer, in the shape of the protocol asked (`v2`: OIP)."""
    if v2:
        return orjson.dumps({"error": error.message})
    return orjson.dumps({"error": {"code": error.code, "message": error.message}})


def error_headers(error: HTTPError) -> list[tuple[bytes, bytes]]:
    """Headers an error answer carries besides the content type and length."""
    headers: list[tuple[bytes, bytes]] = []
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    if error.code == 413:
        # The rest of an oversized body is never read: do not reuse this connection.
        headers.append((b"connection", b"close"))
    return headers
