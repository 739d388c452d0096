"""Child processes that must not outlive pagefault: llama.cpp's server and the embedding workers."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Have Linux SIGKILL this process when its parent dies, even by SIGKILL; exit now if `parent` is gone already
    (it died before the request). Elsewhere a no-op. The signal is tied to the parent's thread that started us."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
