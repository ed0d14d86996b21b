"""The Kubernetes termination message: the operator shows it on the Endpoint's status."""

from __future__ import annotations

import os

TERMINATION_LOG_ENV = "BERTH_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
MAX_MESSAGE_BYTES = 4000  # Kubernetes keeps at most 4096 bytes
# How a pipeline's refused wiring starts its message: the operator puts it on the Model's Ready.
WIRING_REFUSED = "pipeline wiring refused"


def one_line(message: str) -> str:
    """The message on one line (the operator reads the last line of a termination message)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def write_termination_message(message: str) -> None:
    """Write `message`, on one line, to the termination log when that path is writable; never fails."""
    path = os.environ.get(TERMINATION_LOG_ENV)
    if path is None:
        # Outside Kubernetes the default path does not exist: do not create files in /dev.
        path = DEFAULT_TERMINATION_LOG
        if not (os.path.exists(path) and os.access(path, os.W_OK)):
            return
    text = one_line(message).encode("utf-8")[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore")
    try:
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(text)
    except OSError:
        pass
