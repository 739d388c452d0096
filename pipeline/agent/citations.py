"""Citations checked against what the agent retrieved: a chunk id counts wherever it appears in what the
model sent (small models often cite a whole hit header, `chunk_id: ba1b... | source: R-admin.pdf | page: 61`), and
an id the model mangled counts when it can stand for one retrieved chunk only: a prefix of at least
`PREFIX_CHARS` characters of one retrieved id (`ddf53f1d9153075a7e3`, the 20-character id cut short), or, at
`NEAR_CHARS` characters or more, one character changed, added or dropped, or two neighbours swapped
(`70e30aeef72e0c6f22db` for `30e30aeef72e0c6f22db`, `dddf53f1d9153075a7e3` for `ddfd53f1d9153075a7e3`: the 1.5B
model's citations in the demo)."""

from __future__ import annotations

import re

from pipeline.types import Citation, Hit

PREFIX_CHARS = 12
NEAR_CHARS = 16
_TOKEN = re.compile(r"[0-9A-Za-z]+")


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


def _one_edit(a: str, b: str) -> bool:
    """`a` and `b` differ by exactly one character changed, added or dropped, or two neighbours swapped."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long = sorted((a, b), key=len)
    cut = next((i for i, (x, y) in enumerate(zip(short, long)) if x != y), len(short))
    return short[cut:] == long[cut + 1:]


def repaired(text: str, known: dict[str, Hit]) -> str | None:
    """The one id of `known` that a token of `text` mangles (a long enough prefix of it, or one edit away), or
    None when no token does or when a token could stand for two ids."""
    matches = set()
    for token in _TOKEN.findall(text):
        if len(token) < PREFIX_CHARS:
            continue
        close = {cid for cid in known if len(token) < len(cid) and cid.startswith(token)}
        if len(token) >= NEAR_CHARS:
            close |= {cid for cid in known if _one_edit(token, cid)}
        if len(close) > 1:
            return None
        matches |= close
    return matches.pop() if len(matches) == 1 else None


def check(message: str, cited: list[str], retrieved: dict[str, Hit]) -> tuple[list[Citation], list[str], dict[str, str]]:
    """(citations to retrieved chunks, cited strings holding no retrieved chunk id, {mangled string: the id it was
    taken for}).

    Each cited string contributes every retrieved id inside it, or else the one retrieved id it mangles; ids
    mentioned in the message are cited too.
    """
    kept: list[str] = []
    dropped: list[str] = []
    mended: dict[str, str] = {}
    for entry in cited:
        found = ids_in(entry, retrieved)
        if not found and (near := repaired(entry, retrieved)):
            found, mended[entry] = [near], near
        kept += found
        if not found:
            dropped.append(entry)
    kept += ids_in(message, retrieved)
    citations = [Citation.of(retrieved[cid]) for cid in dict.fromkeys(kept)]
    return citations, list(dict.fromkeys(dropped)), mended
