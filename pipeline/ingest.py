"""Ingest a directory into archival memory: incremental, crash-safe, with parsing overlapped with embedding."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from pipeline.chunk import Chunk, chunk_sections
from pipeline.config import Settings
from pipeline.discover import discover, sha256_file
from pipeline.parse import ParseError, parse
from pipeline.store import Archive, StoreMeta, chunk_schema, read_meta

EXIT_FAILURES = 2  # `analyze ingest` exits with this when any file failed (the rest still landed)
WRITE_BATCH = 512  # chunks buffered before a write to LanceDB
EMBED_BATCH = 128  # chunks handed to the model at once


@dataclass
class IngestReport:
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)
    pages: int = 0
    chunks: int = 0  # chunks written in this run
    embedded: int = 0  # of which freshly embedded (the rest reused a stored vector of the same text)
    seconds: float = 0.0
    embed_seconds: float = 0.0  # time spent inside the model

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (f"{self.new} new, {self.changed} changed, {self.unchanged} unchanged, {self.removed} removed, "
                f"{self.failed} failed files; {self.pages} pages, {self.chunks} chunks ({self.embedded} embedded) "
                f"in {self.seconds:.1f}s, {self.chunks_per_s:.1f} chunks/s")

    def to_dict(self) -> dict[str, Any]:
        return {"new": self.new, "changed": self.changed, "unchanged": self.unchanged, "removed": self.removed,
                "failed": self.failed, "failures": [{"path": p, "error": e} for p, e in self.failures],
                "pages": self.pages, "chunks": self.chunks, "embedded": self.embedded,
                "seconds": round(self.seconds, 3), "embed_seconds": round(self.embed_seconds, 3),
                "chunks_per_s": round(self.chunks_per_s, 2)}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class _Todo:
    rel: str
    path: Path
    sha: str
    stat: os.stat_result
    is_new: bool


def ingest_directory(root: Path, settings: Settings, *, progress: bool = True, rebuild: bool = False,
                     embedder=None, on_failure: Callable[[str, str], None] | None = None) -> IngestReport:
    """Bring the store at `settings.store` in line with the files under `root`.

    Unchanged files (same size and mtime, or same sha256) are skipped without parsing; changed files have their
    chunks replaced; files gone from `root` are deleted. Bad files are recorded as failed with a one-line reason
    (also passed to `on_failure`) and the rest still lands.
    """
    started = time.perf_counter()
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no such directory: {root}")
    report = IngestReport()
    files, unsupported = discover(root)
    embedder = embedder or _embedder_for(settings)
    archive = Archive.create(settings.store, _meta(settings, embedder), embedder=embedder, rebuild=rebuild)
    known = archive.document_rows()

    todo: list[_Todo] = []
    touched: list[dict[str, Any]] = []  # unchanged content, new mtime: refresh the row
    for rel_path in files:
        rel, path = rel_path.as_posix(), root / rel_path
        stat = path.stat()
        row = known.get(rel)
        same = bool(row) and row["size"] == stat.st_size and row["mtime_ns"] == stat.st_mtime_ns
        sha = None if same else sha256_file(path)
        if row and (same or row["sha256"] == sha):
            if row["status"] == "ok":  # a file that failed before fails again until it changes: say so again
                report.unchanged += 1
            else:
                report.failures.append((rel, row["error"]))
            if not same:
                touched.append(row | {"mtime_ns": stat.st_mtime_ns})
            continue
        todo.append(_Todo(rel, path, sha, stat, is_new=row is None))

    failed_rows = []
    for rel_path in unsupported:
        path = root / rel_path
        reason = f"unsupported file type {rel_path.suffix.lower() or '(no extension)'}"
        failed_rows.append(_failed_row(rel_path.as_posix(), path, None, reason))
        report.failures.append((rel_path.as_posix(), reason))
    present = {p.as_posix() for p in files} | {p.as_posix() for p in unsupported}
    removed = sorted(set(known) - present)
    report.removed = len(removed)
    archive.delete_documents(removed)
    archive.write(None, replace_sources=[r["path"] for r in failed_rows], documents=failed_rows + touched)

    if todo:
        _process(todo, archive, embedder, settings, report, progress)
    for path, reason in report.failures:
        if on_failure:
            on_failure(path, reason)
    if todo or removed or failed_rows:
        archive.refresh_indexes()
    report.seconds = time.perf_counter() - started
    return report


def _embedder_for(settings: Settings):
    from pipeline.embed import Embedder

    return Embedder(settings.embedder, batch_size=settings.embed_batch_size)


def _meta(settings: Settings, embedder) -> StoreMeta:
    stored = read_meta(settings.store)
    # The dimension of an unchanged embedder is taken from the store, so a no-op re-ingest never loads the model.
    dim = stored.dim if stored and stored.embedder == settings.embedder else embedder.dim
    return StoreMeta(embedder=settings.embedder, dim=dim, chunk_tokens=settings.chunk_tokens,
                     chunk_overlap=settings.chunk_overlap)


def _failed_row(rel: str, path: Path, sha: str | None, reason: str) -> dict[str, Any]:
    try:
        stat = path.stat()
        size, mtime = stat.st_size, stat.st_mtime_ns
    except OSError:
        size, mtime = 0, 0
    return {"path": rel, "sha256": sha or "", "size": size, "mtime_ns": mtime, "pages": None, "chunks": 0,
            "status": "failed", "error": reason, "ingested_at": _now()}


# --- the streaming part: parse+chunk in a thread, embed+write here ---------------------------------------------

_DONE = object()


def _produce(todo: list[_Todo], tokenizer, settings: Settings, out: "queue.Queue[Any]", stop: threading.Event) -> None:
    """Parse and chunk files in order, putting ("chunks", item, [Chunk]), ("done", item, pages) or ("failed", ...).

    The thread runs at the lowest priority: the model's threads spin on every core, and a parser competing
    with them at equal priority halves their throughput (measured); niced, it parses in their gaps instead.
    """
    with contextlib.suppress(AttributeError, OSError):  # per-thread nice is a Linux feature
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    try:
        for item in todo:
            if stop.is_set():
                return
            try:
                parsed = parse(item.path)
                batch: list[Chunk] = []
                for chunk in chunk_sections(parsed.sections, tokenizer, max_tokens=settings.chunk_tokens,
                                            overlap=settings.chunk_overlap):
                    batch.append(chunk)
                    if len(batch) >= EMBED_BATCH:
                        out.put(("chunks", item, batch))
                        batch = []
                if batch:
                    out.put(("chunks", item, batch))
                out.put(("done", item, parsed.pages))
            except ParseError as exc:
                out.put(("failed", item, str(exc)))
            except Exception as exc:  # a parser bug on one file must not sink the corpus
                out.put(("failed", item, f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"))
    finally:
        out.put(_DONE)


def _process(todo: list[_Todo], archive: Archive, embedder, settings: Settings, report: IngestReport,
             progress: bool) -> None:
    if settings.chunk_tokens > embedder.max_tokens:
        raise ValueError(f"chunk size {settings.chunk_tokens} exceeds the embedder's limit of "
                         f"{embedder.max_tokens} tokens: chunks would be truncated")
    schema = chunk_schema(archive.meta.dim)
    items: "queue.Queue[Any]" = queue.Queue(maxsize=8)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(todo, embedder.new_tokenizer(), settings, items, stop), daemon=True)
    producer.start()

    files_bar = tqdm(total=len(todo), desc="files", unit="file", disable=not progress)
    chunks_bar = tqdm(desc="chunks", unit="chunk", disable=not progress)
    unembedded: list[tuple[_Todo, Chunk]] = []  # gathered across files, so small files share a model call
    waiting_docs: list[dict[str, Any]] = []  # finished documents whose last chunks are still unembedded
    pending: list[dict[str, Any]] = []  # embedded chunk rows not yet written
    pending_docs: list[dict[str, Any]] = []
    to_clear: list[str] = []  # sources whose old chunks go before their first new ones
    cleared: set[str] = set()
    reuse: dict[str, Any] = {}  # content_hash -> vector of chunks stored before this run, for files in flight
    counts: dict[str, int] = {}

    def embed() -> None:
        if unembedded:
            vectors = _vectors([chunk for _, chunk in unembedded], embedder, reuse, report)
            pending.extend(_row(item, chunk, vector) for (item, chunk), vector in zip(unembedded, vectors))
            chunks_bar.update(len(unembedded))
            unembedded.clear()
        pending_docs.extend(waiting_docs)
        waiting_docs.clear()

    def flush() -> None:
        embed()
        archive.write(pa.Table.from_pylist(pending, schema=schema) if pending else None,
                      replace_sources=list(to_clear), documents=list(pending_docs))
        cleared.update(to_clear)
        pending.clear(), pending_docs.clear(), to_clear.clear()

    def start(item: _Todo) -> None:
        if item.rel not in cleared and item.rel not in to_clear:
            if not item.is_new:
                reuse.update(archive.vectors_for([item.rel]))
            to_clear.append(item.rel)

    def fail(item: _Todo, reason: str) -> None:
        report.failures.append((item.rel, reason))
        unembedded[:] = [(i, c) for i, c in unembedded if i.rel != item.rel]
        pending[:] = [row for row in pending if row["source"] != item.rel]
        counts.pop(item.rel, None)
        if item.rel not in to_clear:  # chunks of it already written: delete them again
            to_clear.append(item.rel)
        waiting_docs.append(_failed_row(item.rel, item.path, item.sha, reason))

    try:
        while (message := items.get()) is not _DONE:
            kind, item, payload = message
            start(item)
            if kind == "chunks":
                unembedded.extend((item, chunk) for chunk in payload)
                counts[item.rel] = counts.get(item.rel, 0) + len(payload)
            elif kind == "failed" or not counts.get(item.rel):
                fail(item, payload if kind == "failed" else "no extractable text")
                files_bar.update(1)
            else:
                report.new += item.is_new
                report.changed += not item.is_new
                report.pages += payload or 0
                report.chunks += counts[item.rel]
                waiting_docs.append({"path": item.rel, "sha256": item.sha, "size": item.stat.st_size,
                                     "mtime_ns": item.stat.st_mtime_ns, "pages": payload,
                                     "chunks": counts.pop(item.rel), "status": "ok", "error": None,
                                     "ingested_at": _now()})
                files_bar.update(1)
            if len(unembedded) >= EMBED_BATCH or (unembedded and items.empty()):
                embed()  # a full batch, or the parser is behind: never let the model wait
            if len(pending) >= WRITE_BATCH or len(pending_docs) + len(waiting_docs) >= 256:
                flush()
        flush()
    finally:
        stop.set()
        files_bar.close(), chunks_bar.close()


def _vectors(chunks: list[Chunk], embedder, reuse: dict[str, Any], report: IngestReport) -> list[Any]:
    hashes = [c.content_hash for c in chunks]
    missing = [i for i, h in enumerate(hashes) if h not in reuse]
    vectors: list[Any] = [reuse.get(h) for h in hashes]
    if missing:
        t0 = time.perf_counter()
        fresh = embedder.encode([chunks[i].text for i in missing])
        report.embed_seconds += time.perf_counter() - t0
        for i, vector in zip(missing, fresh):
            vectors[i] = vector
        report.embedded += len(missing)
    return vectors


def _row(item: _Todo, chunk: Chunk, vector: Any) -> dict[str, Any]:
    digest = chunk.content_hash
    chunk_id = hashlib.sha256(f"{item.rel}\0{chunk.ordinal}\0{digest}".encode()).hexdigest()[:20]
    return {"chunk_id": chunk_id, "source": item.rel, "page": chunk.page, "page_end": chunk.page,
            "heading": chunk.heading, "text": chunk.text, "content_hash": digest, "ordinal": chunk.ordinal,
            "vector": vector}
