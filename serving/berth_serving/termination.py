"""The Kubernetes termination message: the operator shows it on the Endpoint's status."""

from __future__ import annotations

import os

TERMINATION_LOG_ENV = "BERTH_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def write_termination_message(message: str) -> None:
    """Write `message` to the termination log when that path is writable; never fails."""
    path = os.environ.get(TERMINATION_LOG_ENV)
    if path is None:
        # Outside Kubernetes the default path does not exist: do not create files in /dev.
        path = DEFAULT_TERMINATION_LOG
        if not (os.path.exists(path) and os.access(path, os.W_OK)):
            return
    try:
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(message[:4000])  # Kubernetes keeps at most 4096 bytes
    except OSError:
        pass
