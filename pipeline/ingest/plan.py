"""What every ingest engine shares: the report, incremental planning against the store, and the rows it writes.

An engine calls `begin` (open the store, plan: unchanged skipped, changed and new to do, removed deleted,
unsupported recorded as failed), processes `plan.todo` its own way, writing each document's chunks before its
`document_row` (the commit point), and then calls `finish` (report failures, refresh the indexes).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any

from pipeline.archive.lock import WriterLock, writer_lock
from pipeline.archive.schema import SEARCH_COLUMN, StoreMeta, read_meta
from pipeline.archive.store import Archive, check_ours
from pipeline.config import DEFAULT_EMBED_BACKEND, Settings
from pipeline.files import utc_now
from pipeline.ingest.chunk import Chunk
from pipeline.ingest.discover import discover, display_path, sha256_file
from pipeline.ingest.parse import OcrTally, ParseError

EXIT_FAILURES = 2  # `analyze ingest` exits with this when any file failed (the rest still landed)


@dataclass
class IngestReport:
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)
    pages: int = 0
    chunks: int = 0  # chunks written in this run
    embedded: int = 0  # of which freshly embedded (the rest reused a stored vector of the same search text)
    ocr_pages: int = 0  # pages read by OCR in this run
    ocr_low_pages: int = 0  # of which with low confidence
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, what was lost) for files that landed
    seconds: float = 0.0
    embed_seconds: float = 0.0  # time spent embedding here, or waiting for the embedding workers
    repaired: int = 0  # duplicate rows removed by --repair
    embed_batches: list[tuple[float, int]] = field(default_factory=list)  # (seconds into the run, chunks) per
    # embedding batch, as each finished: the start-up and the steady rate apart (`python -m pipeline.bench ray_ingest`)
    started_at: float = field(default_factory=time.time, repr=False)  # wall clock, as the batches are stamped

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        repaired = f"; {self.repaired} duplicate rows removed" if self.repaired else ""
        ocr = f" ({self.ocr_pages} OCR'd, {self.ocr_low_pages} with low confidence)" if self.ocr_pages else ""
        return (f"{self.new} new, {self.changed} changed, {self.unchanged} unchanged, {self.removed} removed, "
                f"{self.failed} failed files; {self.pages} pages{ocr}, {self.chunks} chunks ({self.embedded} embedded) "
                f"in {self.seconds:.1f}s, {self.chunks_per_s:.1f} chunks/s{repaired}")

    def to_dict(self) -> dict[str, Any]:
        return {"new": self.new, "changed": self.changed, "unchanged": self.unchanged, "removed": self.removed,
                "failed": self.failed, "failures": [{"path": p, "error": e} for p, e in self.failures],
                "pages": self.pages, "ocr_pages": self.ocr_pages, "ocr_low_pages": self.ocr_low_pages,
                "warnings": [{"path": p, "warning": w} for p, w in self.warnings],
                "chunks": self.chunks, "embedded": self.embedded, "repaired": self.repaired, "seconds": round(self.seconds, 3),
                "embed_seconds": round(self.embed_seconds, 3),
                "chunks_per_s": round(self.chunks_per_s, 2)}

    def batch_embedded(self, at: float, chunks: int) -> None:
        """Note an embedding batch of `chunks` finished at `at` (`time.time()` where it ran: any node's clock)."""
        self.embed_batches.append((at - self.started_at, chunks))

    def done(self, item: "Todo", pages: int | None, chunks: int, ocr: OcrTally | None = None) -> None:
        """Count a file whose chunks were all produced (`ocr`: what OCR did for it)."""
        self.new += item.is_new
        self.changed += not item.is_new
        self.pages += pages or 0
        self.chunks += chunks
        if ocr is not None:
            self.ocr_pages += ocr.pages
            self.ocr_low_pages += ocr.low_confidence
            if ocr.warning():
                self.warnings.append((item.rel, ocr.warning()))


@dataclass
class Todo:
    """A new or changed file to parse, chunk and embed."""

    rel: str  # the printable path, the key of the file's rows
    path: Path
    raw: bytes  # the path's own bytes (os.fsencode), kept as `path_bytes`
    sha: str
    stat: os.stat_result
    is_new: bool
    ocr_mode: str | None = None  # the --ocr mode it is read with (PDFs only), recorded in its document row


@dataclass
class Plan:
    todo: list[Todo]
    removed: list[str]
    failed_rows: list[dict[str, Any]]  # unsupported and unreadable files, recorded as failed
    touched: list[dict[str, Any]]  # unchanged content with a new mtime: the row is refreshed


@contextlib.contextmanager
def writing(settings: Settings, *, wait: float = 0.0) -> Iterator[WriterLock]:
    """Hold the store's writer lock for a whole ingest run (`StoreLocked` if another writer keeps it past `wait`
    seconds). A store that is not ours is refused (`StoreError`) before the lock file is made in it, and again
    under the lock by `begin` (`Archive.create` checks), in case it changed while we waited."""
    check_ours(settings.store)
    with writer_lock(settings.store, wait=wait) as lock:
        yield lock


def begin(root: Path, settings: Settings, embedder, report: IngestReport, *, rebuild: bool,
          repair: bool = False) -> tuple[Archive, Plan]:
    """Open (or create) the store, plan the run, and apply what needs no parsing: removals, unsupported and
    unreadable files, refreshed mtimes; `repair` first removes duplicate rows. Call it inside `writing`.
    Raises FileNotFoundError for a missing `root`, StoreError for a store built otherwise.

    Each file is stat-ed and hashed on its own: whatever happens to one (it vanished, became a folder, cannot be
    opened, is too large) fails that file alone."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no such directory: {root}")
    found = discover(root)
    archive = Archive.create(settings.store, store_meta(settings, embedder), embedder=embedder, rebuild=rebuild)
    if repair:
        repaired = archive.repair_duplicates()
        report.repaired = repaired["chunks"] + repaired["documents"]
    known = archive.document_rows()

    plan = Plan([], [], [], [])

    def fail(rel_path: Path, reason: str, *, retry: bool = False) -> None:
        plan.failed_rows.append(failed_row(rel_path, root / rel_path, None, reason, retry=retry))
        report.failures.append((display_path(rel_path), reason))

    for rel_path in found.supported:
        rel, path = display_path(rel_path), root / rel_path
        try:
            stat = os.stat(path)
            if not S_ISREG(stat.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a regular file")
            row = known.get(rel)
            same = bool(row) and row["size"] == stat.st_size and row["mtime_ns"] == stat.st_mtime_ns
            if not same and stat.st_size > settings.max_file_mb << 20:
                fail(rel_path, f"too large ({stat.st_size / (1 << 20):,.0f} MiB; the limit is "
                               f"{settings.max_file_mb} MiB, set by --max-file-mb)")
                continue
            sha = None if same else sha256_file(path)
        except OSError as exc:
            fail(rel_path, read_error(exc), retry=True)
            continue
        mode = ocr_mode(path, settings)
        if row and (same or row["sha256"] == sha) and row["ocr_mode"] == mode:  # a PDF read with another mode: again
            if row["status"] == "ok":  # a file that failed before fails again until it changes: say so again
                report.unchanged += 1
            else:
                report.failures.append((rel, row["error"]))
            if not same:
                plan.touched.append(row | {"mtime_ns": stat.st_mtime_ns})
            continue
        plan.todo.append(Todo(rel, path, os.fsencode(rel_path.as_posix()), sha or row["sha256"], stat,
                              is_new=row is None, ocr_mode=mode))

    for rel_path in found.unsupported:
        fail(rel_path, f"unsupported file type {rel_path.suffix.lower() or '(no extension)'}")
    for rel_path, reason in found.unusable:
        fail(rel_path, reason, retry=True)
    present = {display_path(p) for p in [*found.supported, *found.unsupported, *(p for p, _ in found.unusable)]}
    plan.removed = sorted(set(known) - present)
    report.removed = len(plan.removed)
    archive.delete_documents(plan.removed)
    archive.write(None, replace_sources=[r["path"] for r in plan.failed_rows],
                  documents=plan.failed_rows + plan.touched)
    if plan.todo and settings.chunk_tokens > embedder.max_tokens:
        raise ValueError(f"chunk size {settings.chunk_tokens} exceeds the embedder's limit of "
                         f"{embedder.max_tokens} tokens: chunks would be truncated")
    return archive, plan


def finish(archive: Archive, plan: Plan, report: IngestReport,
           on_failure: Callable[[str, str], None] | None) -> None:
    """Name every failed file, and bring the indexes up to date when anything changed."""
    for path, reason in report.failures:
        if on_failure:
            on_failure(path, reason)
    if plan.todo or plan.removed or plan.failed_rows or report.repaired:
        archive.refresh_indexes()


def embedder_for(settings: Settings, *, rebuild: bool = False):
    """The embedder an ingest runs: the backend asked for, else the store's own (`rebuild` too), else
    DEFAULT_EMBED_BACKEND. A store keeps its quantization (moved to another CPU, its vectors stay comparable);
    a new or rebuilt one gets the quantization this CPU suits."""
    from pipeline.ingest.embed import Embedder

    stored = read_meta(settings.store)
    if stored is not None and stored.embedder != settings.embedder:
        stored = None  # another embedder: an error, or with --rebuild a new store
    backend = settings.embed_backend or (stored.embed_backend if stored else DEFAULT_EMBED_BACKEND)
    keep = stored is not None and stored.embed_backend == backend and not rebuild
    return Embedder(settings.embedder, backend=backend, quantization=stored.quantization if keep else None,
                    batch_size=settings.embed_batch_size)


def store_meta(settings: Settings, embedder) -> StoreMeta:
    """What the store will record: the settings, and the backend and quantization of the embedder that runs."""
    stored = read_meta(settings.store)
    # The dimension of an unchanged embedder is taken from the store, so a no-op re-ingest never loads the model.
    dim = stored.dim if stored and stored.embedder == settings.embedder else embedder.dim
    return StoreMeta(embedder=settings.embedder, dim=dim, chunk_tokens=settings.chunk_tokens,
                     chunk_overlap=settings.chunk_overlap, embed_backend=embedder.backend,
                     quantization=embedder.quantization)


def failure_reason(exc: Exception) -> str:
    """The one line recorded for a file that could not be parsed."""
    if isinstance(exc, ParseError):
        return str(exc)
    if isinstance(exc, OSError):
        return read_error(exc)
    first = str(exc).splitlines()[0][:200] if str(exc) else ""  # a parser bug on one file must not sink the corpus
    return f"unexpected {type(exc).__name__}: {first}"


def read_error(exc: OSError) -> str:
    """One line for a file that could not be read."""
    if isinstance(exc, FileNotFoundError):
        return "vanished before it could be read"
    if isinstance(exc, IsADirectoryError):
        return "is a folder now, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return f"cannot read: {exc.strerror or exc}"


def changed_since_planned(item: Todo) -> bool:
    """Whether the file is gone or differs (size, mtime) from when it was hashed: what was read may be torn."""
    return changed_since(item.path, item.stat.st_size, item.stat.st_mtime_ns)


def changed_since(path: Path | str, size: int, mtime_ns: int) -> bool:
    """Whether the file at `path` is gone or no longer has this size and mtime."""
    try:
        now = os.stat(path)
    except OSError:
        return True
    return (now.st_size, now.st_mtime_ns) != (size, mtime_ns)


CHANGED_WHILE_READ = "changed while being read (it is read again on the next run)"


def ocr_mode(path: Path, settings: Settings) -> str | None:
    """The OCR mode a file is read with: `settings.ocr` for a PDF, None for formats that are never OCR'd."""
    return settings.ocr if path.suffix.lower() == ".pdf" else None


def document_row(item: Todo, pages: int | None, chunks: int, ocr: OcrTally | None = None) -> dict[str, Any]:
    ocr = ocr or OcrTally()
    return {"path": item.rel, "path_bytes": item.raw, "sha256": item.sha, "size": item.stat.st_size,
            "mtime_ns": item.stat.st_mtime_ns, "pages": pages, "chunks": chunks, "status": "ok", "error": None,
            "warning": ocr.warning(), "ocr_mode": item.ocr_mode, "ocr_pages": ocr.pages,
            "ocr_low_pages": ocr.low_confidence, "ingested_at": utc_now()}


def failed_row(rel_path: Path | bytes, path: Path, sha: str | None, reason: str, *,
               retry: bool = False, ocr_mode: str | None = None) -> dict[str, Any]:
    """A `documents` row for a file that failed (`rel_path` as a path or as its own bytes). A permanent failure
    (a corrupt PDF) keeps the file's size and mtime, so it stays failed until it changes; with `retry` (it
    vanished, changed while read, could not be opened) the row matches no file, so the next run tries again."""
    raw = rel_path if isinstance(rel_path, bytes) else os.fsencode(Path(rel_path).as_posix())
    size, mtime = -1, -1
    if not retry:
        try:
            stat = os.stat(path)
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            pass
    return {"path": display_path(os.fsdecode(raw)), "path_bytes": raw, "sha256": sha or "", "size": size,
            "mtime_ns": mtime, "pages": None, "chunks": 0, "status": "failed", "error": reason, "warning": None,
            "ocr_mode": ocr_mode, "ocr_pages": 0, "ocr_low_pages": 0, "ingested_at": utc_now()}


def chunk_row(rel: str, chunk: Chunk, vector: Any) -> dict[str, Any]:
    digest = chunk.content_hash
    chunk_id = hashlib.sha256(f"{rel}\0{chunk.ordinal}\0{digest}".encode()).hexdigest()[:20]
    return {"chunk_id": chunk_id, "source": rel, "page": chunk.page, "page_end": chunk.page,
            "heading": chunk.heading, "text": chunk.text, SEARCH_COLUMN: chunk.search_text, "content_hash": digest,
            "ordinal": chunk.ordinal, "ocr": chunk.ocr_confidence is not None, "ocr_confidence": chunk.ocr_confidence,
            "vector": vector}
