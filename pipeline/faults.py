"""Named fault points in the real write paths, so that crash tests fail the code itself, not a copy of it.

`PAGEFAULT_FAULT=NAME@N=ACTION` makes the N-th time this process reaches `fault_point(NAME)` do ACTION:
`kill` (SIGKILL this process, after naming its child processes on stderr) or `enospc` (raise
`OSError(ENOSPC)`, as a full disk would). Unset, a fault point costs one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

ENV = "PAGEFAULT_FAULT"
_reached: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, _, action = spec.partition("=")
    point, _, nth = where.partition("@")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] != int(nth or 1):
        return
    if action == "kill":
        import multiprocessing

        children = " ".join(str(p.pid) for p in multiprocessing.active_children())
        print(f"fault point {name}@{nth}: SIGKILL pid {os.getpid()}; children: {children}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} (use kill or enospc)")
