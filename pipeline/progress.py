"""Progress that suits where it goes: tqdm bars on a terminal, one plain line every few seconds in a log.

A log (CI, `nohup`, a batch scheduler) would otherwise collect hundreds of carriage-return frames.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any

LOG_EVERY = 5.0  # seconds between two lines in a log


def to_terminal(stream: IO[str] | None = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class LogLine:
    """The part of tqdm's interface the pipeline uses (`update`, `set_postfix`, `close`), written as lines like
    `batch: 12/100 q (12%), 0.5 q/s, ETA 2m56s, ok 11, failed 1` at most every `every` seconds, and once at
    `close`. `scale` divides counts for display (1e6 with unit "MB" counts bytes)."""

    def __init__(self, desc: str, total: float | None, unit: str, *, scale: float = 1.0, every: float = LOG_EVERY,
                 file: IO[str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.desc, self.total, self.unit, self.scale, self.every = desc, total, unit, scale, every
        self.file, self.clock = file, clock
        self.n = 0.0
        self.postfix: dict[str, Any] = {}
        self.started = self.last = clock()
        self.closed = False
        self.printed = ""

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.every:
            self._print()

    def set_postfix(self, values: dict[str, Any], refresh: bool = False) -> None:
        self.postfix = dict(values)

    def close(self) -> None:
        """The last line, unless the one before said the same."""
        if not self.closed:
            self.closed = True
            if self.line() != self.printed:
                self._print()

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.n / elapsed
        done = self._fmt(self.n)
        parts = [f"{done}/{self._fmt(self.total)} {self.unit}" if self.total else f"{done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate / self.scale:.{1 if rate / self.scale < 100 else 0}f} {self.unit}/s")
        if self.total and self.n < self.total:
            parts.append("ETA " + (_duration((self.total - self.n) / rate) if rate > 0 else "?"))
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        return f"{self.desc}: " + ", ".join(parts)

    def _fmt(self, value: float | None) -> str:
        value = (value or 0) / self.scale
        return f"{value:.1f}" if self.scale != 1 else f"{value:.0f}"

    def _print(self) -> None:
        self.last, self.printed = self.clock(), self.line()
        print(self.printed, file=self.file or sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_bar(desc: str, total: float | None, unit: str, *, enabled: bool = True, **tqdm_args: Any):
    """A tqdm bar on a terminal; a `LogLine` when stderr is not one; a disabled bar when not `enabled`."""
    from tqdm import tqdm

    if enabled and not to_terminal():
        return LogLine(desc, total, unit)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, **tqdm_args)
