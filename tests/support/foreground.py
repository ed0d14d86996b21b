"""Commands started as a terminal starts a foreground job: SIGINT at its default disposition.

A test that presses Ctrl-C (sends SIGINT) must not inherit the runner's dispositions: a shell
starts background jobs with SIGINT ignored (`make test &`, nohup, some CI launchers), an ignored
signal stays ignored across exec, and Python then installs no KeyboardInterrupt handler, so the
command under test would never see the Ctrl-C a user's terminal delivers."""

from __future__ import annotations

import sys

_RESET_THEN_EXEC = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"


def foreground(args: list[str]) -> list[str]:
    """`args` run with SIGINT at its default, whatever this process inherited."""
    return [sys.executable, "-c", _RESET_THEN_EXEC, *args]
