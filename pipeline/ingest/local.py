"""Ingest a directory into archival memory: incremental, crash-safe, with parsing overlapped with embedding."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from pipeline.ingest.chunk import Chunk, chunk_sections
from pipeline.config import Settings
from pipeline.ingest.discover import discover, sha256_file
from pipeline.ingest.embed import EmbedPool, available_cores
from pipeline.ingest.parse import ParseError, parse
from pipeline.archive.store import Archive, StoreMeta, chunk_schema, read_meta

EXIT_FAILURES = 2  # `analyze ingest` exits with this when any file failed (the rest still landed)
WRITE_BATCH = 512  # chunks buffered before a write to LanceDB
EMBED_BATCH = 256  # chunks handed to the model at once (it sorts them by length: bigger batches pad less)
POOL_MIN_BYTES = 1 << 20  # less to ingest than this, and loading a model copy per worker costs more than it saves
MAX_AUTO_WORKERS = 4  # embedding processes used by default (each holds a model copy)


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
    embed_seconds: float = 0.0  # time spent embedding here, or waiting for the embedding workers

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
    from pipeline.ingest.embed import Embedder

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


# --- the streaming part: parse+chunk here, embed in workers (or inline), write here ------------------------------

@dataclass
class _Batch:
    """Chunks sent to the model together, and the documents whose last chunk is among them or before."""

    pairs: list[tuple[_Todo, Chunk]]
    vectors: list[Any]  # a stored vector reused by content hash, or None where the model supplies one
    texts: list[str]  # what the model embeds: the texts of the chunks without a vector
    future: "Future[Any] | None"
    documents: list[dict[str, Any]]


def embed_workers(settings: Settings, todo_bytes: int) -> int:
    """How many embedding processes to use: `settings.embed_workers`, or by default one per core (at most
    MAX_AUTO_WORKERS) when there are several cores and enough work to repay loading a model copy in each."""
    if settings.embed_workers:
        return settings.embed_workers
    cores = available_cores()
    return min(cores, MAX_AUTO_WORKERS) if cores > 1 and todo_bytes >= POOL_MIN_BYTES else 1


def _process(todo: list[_Todo], archive: Archive, embedder, settings: Settings, report: IngestReport,
             progress: bool) -> None:
    if settings.chunk_tokens > embedder.max_tokens:
        raise ValueError(f"chunk size {settings.chunk_tokens} exceeds the embedder's limit of "
                         f"{embedder.max_tokens} tokens: chunks would be truncated")
    workers = embed_workers(settings, sum(item.stat.st_size for item in todo))
    with EmbedPool(embedder, workers) if workers > 1 else contextlib.nullcontext(embedder) as encoder:
        _Stream(archive, embedder, encoder, workers, report, progress, len(todo)).run(todo, settings)


class _Stream:
    """Parses files in order in this process while the model embeds earlier chunks; writes in order.

    At most 2 batches per worker are in flight, so memory stays bounded however long the corpus. A document's
    row is written only after all its chunks (it rides on the batch holding its last chunk): the commit point.
    """

    def __init__(self, archive: Archive, embedder, encoder, workers: int, report: IngestReport, progress: bool,
                 files: int) -> None:
        self.archive, self.embedder, self.encoder, self.workers = archive, embedder, encoder, workers
        self.report = report
        self.schema = chunk_schema(archive.meta.dim)
        self.files_bar = tqdm(total=files, desc="files", unit="file", disable=not progress)
        self.chunks_bar = tqdm(desc="chunks", unit="chunk", disable=not progress)
        self.unembedded: list[tuple[_Todo, Chunk]] = []  # gathered across files, so small files share a batch
        self.finished: list[dict[str, Any]] = []  # document rows waiting for the next batch
        self.inflight: deque[_Batch] = deque()
        self.pending: list[dict[str, Any]] = []  # embedded chunk rows not yet written
        self.pending_docs: list[dict[str, Any]] = []
        self.to_clear: list[str] = []  # sources whose old chunks go before their first new ones
        self.cleared: set[str] = set()
        self.failed: set[str] = set()
        self.reuse: dict[str, Any] = {}  # content_hash -> vector of chunks stored before this run

    def run(self, todo: list[_Todo], settings: Settings) -> None:
        tokenizer = self.embedder.tokenizer
        try:
            for item in todo:
                self._start(item)
                chunks, pages = 0, None
                try:
                    parsed = parse(item.path)
                    pages = parsed.pages
                    for chunk in chunk_sections(parsed.sections, tokenizer, max_tokens=settings.chunk_tokens,
                                                overlap=settings.chunk_overlap):
                        self.unembedded.append((item, chunk))
                        chunks += 1
                        if len(self.unembedded) >= EMBED_BATCH:
                            self._submit(self.unembedded[:EMBED_BATCH], documents=True)
                            del self.unembedded[:EMBED_BATCH]
                except ParseError as exc:
                    self._fail(item, str(exc))
                except Exception as exc:  # a parser bug on one file must not sink the corpus
                    first = str(exc).splitlines()[0][:200] if str(exc) else ""
                    self._fail(item, f"unexpected {type(exc).__name__}: {first}")
                else:
                    if chunks:
                        self._done(item, pages, chunks)
                    else:
                        self._fail(item, "no extractable text")
                self.files_bar.update(1)
            tail = self.unembedded  # the last chunks, shared out so that every worker finishes together
            share = -(-len(tail) // self.workers) or 1
            pieces = [tail[i:i + share] for i in range(0, len(tail), share)] or [[]]
            for n, piece in enumerate(pieces, start=1):
                self._submit(piece, documents=n == len(pieces))
            self.unembedded = []
            while self.inflight:
                self._harvest()
            self._flush()
        finally:
            self.files_bar.close(), self.chunks_bar.close()

    def _start(self, item: _Todo) -> None:
        if not item.is_new:
            self.reuse.update(self.archive.vectors_for([item.rel]))
        self.to_clear.append(item.rel)

    def _done(self, item: _Todo, pages: int | None, chunks: int) -> None:
        self.report.new += item.is_new
        self.report.changed += not item.is_new
        self.report.pages += pages or 0
        self.report.chunks += chunks
        self.finished.append({"path": item.rel, "sha256": item.sha, "size": item.stat.st_size,
                              "mtime_ns": item.stat.st_mtime_ns, "pages": pages, "chunks": chunks,
                              "status": "ok", "error": None, "ingested_at": _now()})

    def _fail(self, item: _Todo, reason: str) -> None:
        self.report.failures.append((item.rel, reason))
        self.failed.add(item.rel)
        self.unembedded = [(i, c) for i, c in self.unembedded if i.rel != item.rel]
        self.pending = [row for row in self.pending if row["source"] != item.rel]
        if item.rel in self.cleared:  # chunks of it already written: delete them again
            self.to_clear.append(item.rel)
        self.finished.append(_failed_row(item.rel, item.path, item.sha, reason))

    def _submit(self, pairs: list[tuple[_Todo, Chunk]], *, documents: bool) -> None:
        """Send the chunks without a reusable vector to the model; `documents`: the finished rows go along."""
        vectors = [self.reuse.get(chunk.content_hash) for _, chunk in pairs]
        texts = [chunk.text for (_, chunk), vector in zip(pairs, vectors) if vector is None]
        started = time.perf_counter()
        try:
            future = self.encoder.submit(texts) if texts else None
        except BrokenProcessPool as exc:
            self._embed_here(exc)
            future = self.encoder.submit(texts)
        self.report.embed_seconds += time.perf_counter() - started
        self.inflight.append(_Batch(pairs, vectors, texts, future, self.finished if documents else []))
        if documents:
            self.finished = []
        while self.inflight and (len(self.inflight) > 2 * self.workers or self.inflight[0].future is None
                                 or self.inflight[0].future.done()):
            self._harvest()

    def _harvest(self) -> None:
        """Take the oldest batch's vectors, waiting for them, and write when enough rows piled up."""
        batch = self.inflight[0]
        if batch.future is not None:
            started = time.perf_counter()
            try:
                fresh = iter(batch.future.result())
            except BrokenProcessPool as exc:
                self._embed_here(exc)
                fresh = iter(self.embedder.encode(batch.texts))
            self.report.embed_seconds += time.perf_counter() - started
            self.report.embedded += sum(vector is None for vector in batch.vectors)
            batch.vectors = [next(fresh) if vector is None else vector for vector in batch.vectors]
        self.inflight.popleft()
        self.pending.extend(_row(item, chunk, vector) for (item, chunk), vector in zip(batch.pairs, batch.vectors)
                            if item.rel not in self.failed)
        self.pending_docs.extend(batch.documents)
        self.chunks_bar.update(len(batch.pairs))
        if len(self.pending) >= WRITE_BATCH or len(self.pending_docs) >= 256:
            self._flush()

    def _embed_here(self, exc: BaseException) -> None:
        """The workers died (killed for memory, or unable to start): carry on embedding in this process."""
        if self.encoder is not self.embedder:
            tqdm.write(f"embedding workers failed ({exc}); embedding in this process instead", file=sys.stderr)
            self.encoder, self.workers = self.embedder, 1

    def _flush(self) -> None:
        rows = pa.Table.from_pylist(self.pending, schema=self.schema) if self.pending else None
        self.archive.write(rows, replace_sources=self.to_clear, documents=self.pending_docs)
        self.cleared.update(self.to_clear)
        self.pending, self.pending_docs, self.to_clear = [], [], []


def _row(item: _Todo, chunk: Chunk, vector: Any) -> dict[str, Any]:
    digest = chunk.content_hash
    chunk_id = hashlib.sha256(f"{item.rel}\0{chunk.ordinal}\0{digest}".encode()).hexdigest()[:20]
    return {"chunk_id": chunk_id, "source": item.rel, "page": chunk.page, "page_end": chunk.page,
            "heading": chunk.heading, "text": chunk.text, "content_hash": digest, "ordinal": chunk.ordinal,
            "vector": vector}
