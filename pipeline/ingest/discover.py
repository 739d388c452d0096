"""Find the documents under a directory (supported extensions, no hidden files, safe against symlink loops); hash files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SUPPORTED = frozenset({".pdf", ".txt", ".md", ".markdown", ".html", ".htm", ".docx"})


def discover(root: Path) -> tuple[list[Path], list[Path]]:
    """Return (supported, unsupported) files under `root`, as sorted paths relative to it.

    Hidden files and directories (a leading dot) are skipped. Symlinked directories are followed once:
    a directory whose real path was already visited is not entered again, so loops terminate.
    """
    root = Path(root)
    if root.is_file():
        return ([Path(root.name)], []) if root.suffix.lower() in SUPPORTED else ([], [Path(root.name)])
    supported: list[Path] = []
    unsupported: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
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
            if not path.is_file():  # dangling symlink, socket, ...
                continue
            rel = path.relative_to(root)
            (supported if path.suffix.lower() in SUPPORTED else unsupported).append(rel)
    return sorted(supported), sorted(unsupported)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
