"""What a store holds: the table schemas, the searchable column, and the store format version in `pagefault.json`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.archive.location import Location, StoreError
from pipeline.files import utc_now

CHUNKS = "chunks"
DOCUMENTS = "documents"
META_FILE = "pagefault.json"
# Version 2: chunks carry `search_text` (heading path + text), which is what is embedded and full-text indexed,
# and `ocr`/`ocr_confidence`; documents carry `warning` and what OCR did (`ocr_mode`, `ocr_pages`, `ocr_low_pages`).
# A store without `format_version` in its meta file was written by the previous release: version 1.
FORMAT_VERSION = 2
SEARCH_COLUMN = "search_text"  # the chunk column that is embedded and BM25-indexed; `text` is for display


@dataclass(frozen=True)
class StoreMeta:
    """What built the store: a later ingest with other settings must not mix vectors."""

    embedder: str
    dim: int
    chunk_tokens: int
    chunk_overlap: int
    embed_backend: str = "torch"  # what computed the vectors (pipeline.ingest.backends); queries use the same
    quantization: str = "fp32"
    format_version: int = FORMAT_VERSION

    _SETTINGS = ("embedder", "dim", "chunk_tokens", "chunk_overlap", "embed_backend", "quantization")

    def mismatch(self, other: "StoreMeta") -> list[str]:
        return [f"{k}: store has {getattr(self, k)!r}, asked for {getattr(other, k)!r}"
                for k in self._SETTINGS if getattr(self, k) != getattr(other, k)]


def chunk_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("chunk_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("page", pa.int32()),
        pa.field("page_end", pa.int32()),
        pa.field("heading", pa.string()),
        pa.field("text", pa.string()),  # what a hit shows
        pa.field(SEARCH_COLUMN, pa.string()),  # what is embedded and indexed: the heading path, then the text
        pa.field("content_hash", pa.string()),  # of the search text: equal hashes share a vector on re-ingest
        pa.field("ordinal", pa.int32()),
        pa.field("ocr", pa.bool_()),  # the text was read by OCR from a picture of the page
        pa.field("ocr_confidence", pa.float32()),  # that page's mean recognition score (0-1); null without OCR
        pa.field("vector", pa.list_(pa.float32(), dim)),
    ])


DOCUMENT_SCHEMA = pa.schema([
    pa.field("path", pa.string()),  # printable: bytes of the name that are not UTF-8 appear as \xNN escapes
    pa.field("path_bytes", pa.binary()),  # the name's own bytes (os.fsencode), so nothing about it is lost
    pa.field("sha256", pa.string()),
    pa.field("size", pa.int64()),
    pa.field("mtime_ns", pa.int64()),
    pa.field("pages", pa.int32()),
    pa.field("chunks", pa.int32()),
    pa.field("status", pa.string()),  # "ok" or "failed"
    pa.field("error", pa.string()),
    pa.field("warning", pa.string()),  # an ok document that lost something: pages that could not be read
    pa.field("ocr_mode", pa.string()),  # the --ocr mode a PDF was read with (null for other formats)
    pa.field("ocr_pages", pa.int32()),  # pages read by OCR
    pa.field("ocr_low_pages", pa.int32()),  # of which with a mean recognition score below LOW_OCR_CONFIDENCE
    pa.field("ingested_at", pa.string()),
])


def read_meta(path: Path | str | Location) -> StoreMeta | None:
    """The store's meta file, or None when there is no store at `path`. Version 1 stores read as version 1."""
    text = Location.of(path).read_text(META_FILE)
    if text is None:
        return None
    data = json.loads(text)
    fields = {key: data[key] for key in StoreMeta._SETTINGS if key in data}  # a version 1 store: torch, fp32
    return StoreMeta(**fields, format_version=int(data.get("format_version", 1)))


def check_format(path: Path | str | Location, meta: StoreMeta) -> None:
    """Raise StoreError with the one line a user needs when the store at `path` is not of FORMAT_VERSION."""
    if meta.format_version == FORMAT_VERSION:
        return
    older = meta.format_version < FORMAT_VERSION
    raise StoreError(f"the store at {path} was built by {'an older' if older else 'a newer'} pagefault (store format "
                     f"{meta.format_version}, this version reads format {FORMAT_VERSION}); "
                     + ("" if older else "upgrade pagefault, or ") + "rebuild it with `analyze ingest DIR --rebuild`")


def write_meta(path: Path | str | Location, meta: StoreMeta) -> None:
    """The settings that built the store (never a credential), beside its tables."""
    Location.of(path).write_text(META_FILE, json.dumps(asdict(meta) | {"written_at": utc_now()}))
