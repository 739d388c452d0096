"""Split sections into overlapping chunks measured in the embedder's own tokens, so none is ever truncated."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pipeline.ingest.parse import HEADING_SEPARATOR, Section

HEADING_SHARE = 4  # a chunk's heading path takes at most 1/HEADING_SHARE of its word pieces


@dataclass(frozen=True)
class Chunk:
    text: str  # what a search hit shows
    page: int | None
    heading: str
    ordinal: int  # position within its document
    search_text: str  # what is embedded and full-text indexed: the heading path, then the text

    @property
    def content_hash(self) -> str:
        return content_hash(self.search_text)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_sections(sections: Iterable[Section], tokenizer, *, max_tokens: int, overlap: int) -> Iterator[Chunk]:
    """Yield chunks whose search text (heading path, then text) is at most `max_tokens` word pieces, with up to
    `overlap` pieces shared between neighbours.

    Chunks never cross a section (a PDF page, or a heading's body), so page citations are exact and an edit to
    one page changes only that page's chunks. A heading path too long to repeat in every chunk of its section
    is shortened there to its last titles, and the whole path becomes a chunk of its own (once per document),
    so that no title is lost to search.
    """
    if not 0 <= overlap < max_tokens:
        raise ValueError("chunk overlap must be smaller than the chunk size")
    ordinal = 0
    told: set[str] = set()  # long heading paths already given a chunk of their own

    def chunk(text: str, section: Section, search_text: str) -> Chunk:
        nonlocal ordinal
        ordinal += 1
        return Chunk(text=text, page=section.page, heading=section.heading, ordinal=ordinal - 1,
                     search_text=search_text)

    for section in sections:
        if not section.text.strip():
            continue
        prefix, cost = heading_prefix(section.heading, tokenizer, max_tokens // HEADING_SHARE)
        if prefix != section.heading and section.heading not in told:
            told.add(section.heading)
            for text in split_text(section.heading, tokenizer, max_tokens=max_tokens, overlap=overlap):
                yield chunk(text, section, text)
        budget = max_tokens - cost
        for text in split_text(section.text, tokenizer, max_tokens=budget, overlap=min(overlap, budget - 1)):
            yield chunk(text, section, f"{prefix}\n{text}" if prefix else text)


def heading_prefix(heading: str, tokenizer, limit: int) -> tuple[str, int]:
    """(the longest tail of the heading path that fits `limit` pieces with its line end, those pieces)."""
    titles = heading.split(HEADING_SEPARATOR) if heading.strip() else []
    for first in range(len(titles)):
        prefix = HEADING_SEPARATOR.join(titles[first:])
        cost = len(tokenizer.encode(prefix + "\n", add_special_tokens=False).ids)
        if cost <= limit:
            return prefix, cost
    return "", 0


def split_text(text: str, tokenizer, *, max_tokens: int, overlap: int) -> list[str]:
    """Cut `text` into windows of `max_tokens` pieces of `tokenizer` (a `tokenizers.Tokenizer`)."""
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    n = len(offsets)
    pieces: list[str] = []
    start = 0
    while start < n:
        end = min(start + max_tokens, n)
        if end < n:
            end = _boundary(text, offsets, start, end, min_end=start + max(1, (max_tokens * 3) // 4))
        piece = text[offsets[start][0]:offsets[end - 1][1]].strip()
        if piece:
            pieces.append(piece)
        if end >= n:
            break
        start = max(end - overlap, start + 1)
    return pieces


def _boundary(text: str, offsets, start: int, end: int, *, min_end: int) -> int:
    """Pull `end` back to just after a sentence end (or failing that a word end) if one lies past `min_end`."""
    best_word = None
    for i in range(end - 1, min_end - 1, -1):
        char_end = offsets[i][1]
        next_start = offsets[i + 1][0]
        gap = text[char_end:next_start]
        if text[char_end - 1:char_end] in ".!?:;" and gap[:1].isspace():
            return i + 1
        if best_word is None and gap[:1].isspace():
            best_word = i + 1
    return best_word or end
