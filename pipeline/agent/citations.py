"""Citations checked against what the agent retrieved: a chunk id counts wherever it appears in what the
model sent (small models often cite a whole hit header, `chunk_id: ba1b... | source: R-admin.pdf | page: 61`)."""

from __future__ import annotations

import re

from pipeline.types import Citation, Hit


def ids_in(text: str, known: dict[str, Hit]) -> list[str]:
    """The ids of `known` that appear in `text` as whole tokens, in order of appearance."""
    if text in known:
        return [text]
    found = []
    for cid in known:
        match = re.search(rf"(?<![0-9A-Za-z]){re.escape(cid)}(?![0-9A-Za-z])", text)
        if match:
            found.append((match.start(), cid))
    return [cid for _, cid in sorted(found)]


def check(message: str, cited: list[str], retrieved: dict[str, Hit]) -> tuple[list[Citation], list[str]]:
    """(citations to retrieved chunks, cited strings holding no retrieved chunk id).

    Each cited string contributes every retrieved id inside it; ids mentioned in the message are cited too.
    """
    kept: list[str] = []
    dropped: list[str] = []
    for entry in cited:
        found = ids_in(entry, retrieved)
        kept += found
        if not found:
            dropped.append(entry)
    kept += ids_in(message, retrieved)
    citations = [Citation.of(retrieved[cid]) for cid in dict.fromkeys(kept)]
    return citations, list(dict.fromkeys(dropped))
