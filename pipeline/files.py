"""Small file helpers every stage shares: durable atomic replacement, JSONL files read past a torn last line, and
the one timestamp format."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"


def utc_now() -> str:
    """The current UTC time as `2026-01-31T12:00:00Z`, the format of every timestamp pagefault writes."""
    return time.strftime(TIMESTAMP, time.gmtime())


def atomic_write(path: Path, chunks: Iterable[str] | str) -> None:
    """Replace `path` with `chunks` (text, UTF-8) atomically and durably: a temp file in the same directory,
    fsynced, renamed over `path`, then the directory fsynced. A crash leaves either the old file or the new one.

    On an error (a full disk, say) the temp file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            for chunk in [chunks] if isinstance(chunks, str) else chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def complete_lines(path: Path, *, repair: bool = True) -> tuple[bytes, int]:
    """`path`'s bytes up to its last newline, and the length of the torn last line left out (a kill mid-append
    never wrote its newline). With `repair` that torn line is also cut off the file, so the next append is clean."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data) and repair:
        with path.open("r+b") as handle:
            handle.truncate(cut)
    return data[:cut], len(data) - cut
