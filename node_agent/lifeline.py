"""Children that must not outlive the process that started them (a killed demo or test run leaves nothing)."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for a child: the kernel sends it SIGTERM when the thread that started it ends.

    Without it a demo stopped by SIGTERM or a pytest run killed mid-session leaves its broker and agents
    running (they have their own sessions, so no terminal signal reaches them). Linux only.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
