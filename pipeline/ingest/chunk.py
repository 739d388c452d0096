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
    ocr_confidence: float | None = None  # set when the text was read by OCR: its page's mean recognition score

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

    def chunk(text: str, section: Section, search_text: str, ocr_confidence: float | None = None) -> Chunk:
        nonlocal ordinal
        ordinal += 1
        return Chunk(text=text, page=section.page, heading=section.heading, ordinal=ordinal - 1,
                     search_text=search_text, ocr_confidence=ocr_confidence)

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
            yield chunk(text, section, f"{prefix}\n{text}" if prefix else text, section.ocr_confidence)


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
    """Cut `text` into windows of at most `max_tokens` pieces of `tokenizer` (a `tokenizers.Tokenizer`)."""
    return [text[start:end] for start, end in split_spans(text, tokenizer, max_tokens=max_tokens, overlap=overlap)]


def split_spans(text: str, tokenizer, *, max_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans of the windows of `text`: each at most `max_tokens` pieces, starting and ending at word
    boundaries (a word is a run of non-space characters: an identifier is never cut), neighbours sharing up to
    `overlap` pieces.

    A window ends at the strongest boundary in its second half (a blank line, then a line end after a sentence,
    then any line end, then a sentence end, then a word end), the latest of those. When it ends inside a line that fits in a
    window, the next window starts at that line's beginning (likewise for a sentence inside a longer line), so
    every line and sentence of at most `max_tokens` pieces lies whole in some window. Only a word longer than a
    whole window is cut inside, into consecutive windows, next to punctuation where it can.
    """
    offsets = tokenizer.encode(text, add_special_tokens=False).offsets
    if not offsets:
        return []
    cuts = _Cuts(text, offsets)
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end = cuts.n if start + max_tokens >= cuts.n else cuts.end(start, max_tokens)
        while not (cuts.strength[start] and cuts.strength[end]) and end > start + 1 and _pieces(
                tokenizer, text, cuts.chars(start, end)) > max_tokens:
            end -= 1  # a piece of a word can take more pieces alone than inside the word: shrink until it fits
        span = cuts.chars(start, end)
        if span:
            spans.append(span)
        if end >= cuts.n:
            return spans
        start = cuts.next_start(start, end, max_tokens, overlap)


WORD, SENTENCE, LINE, LINE_AFTER_SENTENCE, PARAGRAPH = 1, 2, 3, 4, 5  # boundary strengths
_SENTENCE_ENDS = ".!?;:"
_CLOSERS = "\"')]}\u00bb\u201d\u2019"  # may stand between a sentence's last mark and the space after it


class _Cuts:
    """The places between tokens where a window may end: cut i lies before token i, 0 < i < n."""

    def __init__(self, text: str, offsets: list[tuple[int, int]]) -> None:
        self.text, self.offsets, self.n = text, offsets, len(offsets)
        self.strength = [PARAGRAPH] + [0] * (self.n - 1) + [PARAGRAPH]  # 0: inside a word
        self.line = [True] + [False] * (self.n - 1) + [True]  # the cut is a line end
        for i in range(1, self.n):
            gap = text[offsets[i - 1][1]:offsets[i][0]]
            if not any(ch.isspace() for ch in gap):
                continue
            last = offsets[i - 1][1] - 1
            while last > 0 and text[last] in _CLOSERS:
                last -= 1
            after_sentence = text[last] in _SENTENCE_ENDS
            newlines = gap.count("\n")
            self.line[i] = newlines > 0
            self.strength[i] = (PARAGRAPH if newlines > 1 else LINE_AFTER_SENTENCE if newlines and after_sentence
                                else LINE if newlines else SENTENCE if after_sentence else WORD)
        self.line_start = _last_where(self.line)  # line_start[i]: the last line end at or before cut i
        self.line_end = _next_where(self.line)
        sentence = [strength >= SENTENCE for strength in self.strength]
        self.sentence_start, self.sentence_end = _last_where(sentence), _next_where(sentence)
        self.word_end = _next_where([strength >= WORD for strength in self.strength])

    def end(self, start: int, max_tokens: int) -> int:
        """Where the window from token `start` ends: the latest of the strongest cuts in its second half, else the
        latest word end before that, else (one word fills the window) inside the word."""
        limit, half = start + max_tokens, start + max(1, max_tokens // 2)
        best = None
        for i in range(limit, half - 1, -1):
            if self.strength[i] > (self.strength[best] if best is not None else 0):
                best = i
        if best is not None:
            return best
        word = next((i for i in range(half - 1, start, -1) if self.strength[i]), None)
        if word is not None:
            return word
        return next((i for i in range(limit, start, -1) if self._beside_punctuation(i)), limit)

    def _beside_punctuation(self, i: int) -> bool:
        """Cut i lies inside a word but next to punctuation (`-`, `_`, `/`...), where tokenizers split anyway."""
        before, after = self.text[self.offsets[i - 1][1] - 1], self.text[self.offsets[i][0]]
        return not (before.isalnum() and after.isalnum())

    def next_start(self, start: int, end: int, max_tokens: int, overlap: int) -> int:
        """Where the window after [start, end) begins: at the start of the line (or sentence) that `end` cut, when
        fits in a window; otherwise at the earliest of the strongest boundaries within `overlap` pieces before `end`
        (no earlier than lets the line or sentence that begins at `end` fit whole in the next window, and no weaker
        than the cut: after a line end only whole lines are repeated, after a sentence end whole sentences)."""
        if not self.strength[end]:
            return end  # inside a word longer than a window: carry on where the cut was
        if not self.line[end]:
            line = self.line_start[end]
            if line > start and self.line_end[end] - line <= max_tokens:
                return line
            sentence = self.sentence_start[end]
            if self.strength[end] < SENTENCE and sentence > start and self.sentence_end[end] - sentence <= max_tokens:
                return sentence
        word = self.word_end[end + 1]
        if word - end > max_tokens:
            return end  # a word longer than a window follows: it starts the next one
        lowest = max(start + 1, end - overlap, word - max_tokens)
        following = (self.line_end if self.line[end] else self.sentence_end)[end + 1]  # the unit `end` begins
        if following - end <= max_tokens:  # overlap no more than lets that unit fit whole behind it
            lowest = max(lowest, following - max_tokens)
        least = min(self.strength[end], LINE)  # after a line end, repeat whole lines; after a sentence, sentences
        best = None
        for i in range(lowest, end):
            if self.strength[i] >= least and (best is None or self.strength[i] > self.strength[best]):
                best = i
        return end if best is None else best

    def chars(self, start: int, end: int) -> tuple[int, int] | None:
        """The characters of tokens [start, end), with what the tokenizer skipped inside their words, trimmed."""
        text, offsets = self.text, self.offsets
        first = 0 if start == 0 else offsets[start][0]
        while start and first > offsets[start - 1][1] and not text[first - 1].isspace():
            first -= 1
        last = len(text) if end == self.n else offsets[end - 1][1]
        while end < self.n and last < offsets[end][0] and not text[last].isspace():
            last += 1
        while first < last and text[first].isspace():
            first += 1
        while last > first and text[last - 1].isspace():
            last -= 1
        return (first, last) if first < last else None


def _pieces(tokenizer, text: str, span: tuple[int, int] | None) -> int:
    return len(tokenizer.encode(text[span[0]:span[1]], add_special_tokens=False).ids) if span else 0


def _last_where(flags: list[bool]) -> list[int]:
    """For each index, the last index at or before it where `flags` is true (flags[0] must be true)."""
    out, last = [], 0
    for i, flag in enumerate(flags):
        last = i if flag else last
        out.append(last)
    return out


def _next_where(flags: list[bool]) -> list[int]:
    """For each index, the first index at or after it where `flags` is true (flags[-1] must be true)."""
    out, following = [0] * len(flags), len(flags) - 1
    for i in range(len(flags) - 1, -1, -1):
        following = i if flags[i] else following
        out[i] = following
    return out
