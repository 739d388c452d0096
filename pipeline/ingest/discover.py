"""Find the documents under a directory (supported extensions, no hidden files, safe against symlink loops); hash
files; name paths printably."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import NamedTuple

SUPPORTED = frozenset({".pdf", ".txt", ".md", ".markdown", ".html", ".htm", ".docx"})
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket"}


class Discovery(NamedTuple):
    supported: list[Path]  # regular files with a supported extension, sorted, relative to the root
    unsupported: list[Path]  # regular files of any other type
    unusable: list[tuple[Path, str]]  # what cannot be read as a file (broken symlink, FIFO, device, folder error)


def discover(root: Path) -> Discovery:
    """Everything under `root`, as paths relative to it, split into supported, unsupported and unusable entries.

    Hidden files and directories (a leading dot) are skipped. Symlinked directories are followed once:
    a directory whose real path was already visited is not entered again, so loops terminate.
    """
    root = Path(root)
    if root.is_file():
        found = Discovery([], [], [])
        (found.supported if root.suffix.lower() in SUPPORTED else found.unsupported).append(Path(root.name))
        return found
    supported: list[Path] = []
    unsupported: list[Path] = []
    unusable: list[tuple[Path, str]] = []
    seen: set[str] = set()

    def unlisted(error: OSError) -> None:
        unusable.append((Path(error.filename).relative_to(root), f"cannot list folder: {error.strerror}"))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unlisted):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath, name)
            rel = path.relative_to(root)
            problem = not_a_file(path)
            if problem:
                unusable.append((rel, problem))
            else:
                (supported if path.suffix.lower() in SUPPORTED else unsupported).append(rel)
    return Discovery(sorted(supported), sorted(unsupported), sorted(unusable))


def not_a_file(path: Path) -> str | None:
    """Why `path` cannot be read as a regular file (a broken symlink, a FIFO, a device, a folder), or None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken symlink" if os.path.islink(path) else "vanished before it could be read"
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    return f"not a regular file ({_KINDS.get(stat.S_IFMT(mode), 'special file')})"


def display_path(rel: Path | str) -> str:
    """A path as text that is always valid UTF-8: bytes that are not UTF-8 appear as `\\xe9` escapes.

    A name's own bytes stay recoverable from `os.fsencode(rel)` (stored beside it as `path_bytes`).
    """
    return os.fsencode(Path(rel).as_posix()).decode("utf-8", "backslashreplace")


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
