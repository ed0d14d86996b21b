"""Child processes that can never outlive `berth up`.

Each child leads its own process group (so its own children go with it), asks the
kernel for SIGKILL when its parent dies (Linux PR_SET_PDEATHSIG), and is recorded
here so an exit path that skips the orderly shutdown still kills the group.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence

PR_SET_PDEATHSIG = 1
_LIVE_GROUPS: set[int] = set()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


async def spawn(argv: Sequence[str], env: Mapping[str, str]) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    _LIVE_GROUPS.add(process.pid)
    return process


def signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def forget(pid: int) -> None:
    _LIVE_GROUPS.discard(pid)


async def terminate(process: asyncio.subprocess.Process, grace: float) -> int:
    """SIGTERM the group, wait up to `grace` seconds, then SIGKILL. Returns the exit code."""
    if process.returncode is None:
        signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=grace)
        except TimeoutError:
            signal_group(process.pid, signal.SIGKILL)
            await process.wait()
    # The group may hold grandchildren even after the leader exited.
    signal_group(process.pid, signal.SIGKILL)
    forget(process.pid)
    return process.returncode if process.returncode is not None else -1


def kill_all() -> None:
    """Last resort on interpreter exit: SIGKILL every group still recorded."""
    for pid in list(_LIVE_GROUPS):
        signal_group(pid, signal.SIGKILL)
        _LIVE_GROUPS.discard(pid)


atexit.register(kill_all)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
