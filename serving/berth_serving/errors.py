"""Errors that become HTTP answers: `{"error": {"code": ..., "message": ...}}`."""

from __future__ import annotations


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
