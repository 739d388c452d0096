"""Split sections into overlapping chunks measured in the embedder's own tokens, so none is ever truncated."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pipeline.ingest.parse import Section


@dataclass(frozen=True)
class Chunk:
    text: str
    page: int | None
    heading: str
    ordinal: int  # position within its document

    @property
    def content_hash(self) -> str:
        return content_hash(self.text)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_sections(sections: Iterable[Section], tokenizer, *, max_tokens: int, overlap: int) -> Iterator[Chunk]:
    """Yield chunks of at most `max_tokens` word pieces with `overlap` shared between neighbours.

    Chunks never cross a section (a PDF page, or a heading's body), so page citations are exact and an edit to
    one page changes only that page's chunks. Windows end at a sentence or word boundary when one is near.
    """
    if not 0 <= overlap < max_tokens:
        raise ValueError("chunk overlap must be smaller than the chunk size")
    ordinal = 0
    for section in sections:
        for text in split_text(section.text, tokenizer, max_tokens=max_tokens, overlap=overlap):
            yield Chunk(text=text, page=section.page, heading=section.heading, ordinal=ordinal)
            ordinal += 1


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
