"""Start a child process that a test can interrupt with SIGINT (Ctrl-C), however the tests were started.

A process started in the background of a non-interactive shell (``nohup ... &``, some CI agents)
inherits SIGINT ignored, and an ignored signal stays ignored across ``exec``: Python then installs
no KeyboardInterrupt handler, and a test's ``send_signal(SIGINT)`` does nothing. The launcher
resets SIGINT to its default and replaces itself (same pid) with the real command.
"""

from __future__ import annotations

import sys

_LAUNCHER = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def interruptible(command: list[str]) -> list[str]:
    """``command`` (a Python command line) run so that SIGINT reaches it as Ctrl-C."""
    return [sys.executable, "-c", _LAUNCHER, *command]
