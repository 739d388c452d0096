"""One writer per store: a store-wide writer lock held for a whole ingest run. Readers never take it.

`writer_lock(store, wait=...)` picks the implementation for the store's location. Local stores use an OS file
lock (`flock` on `<store>/.pagefault.lock`): the kernel releases it when the holder exits or is killed, so a
dead writer never blocks the store. An object store would plug in here with a lease object (expiry plus
heartbeat); none is supported yet.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from pipeline.files import utc_now

LOCK_FILE = ".pagefault.lock"
POLL_S = 0.2


class StoreLocked(Exception):
    """Another writer holds the store (the message names it: host, pid, start time)."""


class WriterLock(Protocol):
    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, waiting up to `wait` seconds; `StoreLocked` naming the holder if it stays taken."""
        ...

    def release(self) -> None:
        ...


class LocalFileLock:
    """`flock` on a file inside the store directory; the file also says who holds it."""

    def __init__(self, store: Path) -> None:
        self.store = Path(store)
        self.path = self.store / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    os.close(fd)
                    waited = f" after waiting {wait:g}s" if wait else ""
                    raise StoreLocked(f"the store at {self.store} is being written by another ingest ({holder})"
                                      f"{waited}; wait for it to finish, or pass --wait SECONDS") from None
                time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": utc_now()}).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def holder(self) -> str:
        """'host H, pid P, since T' as written by the holder, or a plain phrase when it has not said yet."""
        try:
            info = json.loads(self.path.read_text())
            return f"host {info['host']}, pid {info['pid']}, since {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder not yet recorded"


@contextlib.contextmanager
def writer_lock(store: Path | str, *, wait: float = 0.0) -> Iterator[WriterLock]:
    """Hold the store's writer lock for the `with` block; `StoreLocked` if another writer keeps it."""
    lock = LocalFileLock(Path(store))
    lock.acquire(wait)
    try:
        yield lock
    finally:
        lock.release()
