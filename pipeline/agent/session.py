"""Sessions: JSON state under `<store parent>/sessions/NAME/` so that `--session NAME` continues a conversation."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.files import atomic_write

SESSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Session:
    """Where a named session lives: `state.json` (working memory, queue, summary, notes) and `recall.jsonl`."""

    directory: Path

    @classmethod
    def for_store(cls, store: Path, name: str) -> "Session":
        if not SESSION_NAME.match(name):
            raise ValueError(f"invalid session name {name!r}: use letters, digits, '.', '_' or '-' (max 64)")
        from pipeline.archive.location import Location

        return cls(Location.of(store).sessions_dir() / name)

    @property
    def recall_path(self) -> Path:
        return self.directory / "recall.jsonl"

    def open(self) -> dict[str, Any]:
        """The saved state ({} for a new session); `OSError`/`ValueError` saying why it cannot be used."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot use session folder {self.directory}: {exc.strerror}") from exc
        path = self.directory / "state.json"
        try:
            state = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        except ValueError as exc:  # bad JSON or not UTF-8
            raise ValueError(f"session state {path} is damaged ({exc}); delete it or use another --session") from None
        if not isinstance(state, dict):
            raise ValueError(f"session state {path} is damaged (not an object); delete it or use another --session")
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(self.directory / "state.json", json.dumps(state, ensure_ascii=False, indent=1))
