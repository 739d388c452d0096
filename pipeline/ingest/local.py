"""Ingest a directory into archival memory: incremental, crash-safe, with parsing overlapped with embedding."""

from __future__ import annotations

import contextlib
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from pipeline.archive.store import Archive, chunk_schema
from pipeline.config import Settings
from pipeline.ingest.chunk import Chunk, chunk_sections
from pipeline.ingest.embed import EmbedPool, available_cores
from pipeline.ingest.ocr import PageReader, ocr_workers
from pipeline.ingest.parse import Parsed, parse
from pipeline.ingest.plan import (CHANGED_WHILE_READ, EXIT_FAILURES, IngestReport, Todo, begin,
                                  changed_since_planned, chunk_row, document_row, embedder_for, failed_row,
                                  failure_reason, finish, writing)
from pipeline.progress import LogLine, to_terminal

__all__ = ["EXIT_FAILURES", "IngestReport", "embed_workers", "ingest_directory"]

WRITE_BATCH = 512  # chunks buffered before a write to LanceDB
EMBED_BATCH = 256  # chunks handed to the model at once (it sorts them by length: bigger batches pad less)
POOL_MIN_BYTES = 1 << 20  # less to ingest than this, and loading a model copy per worker costs more than it saves
MAX_AUTO_WORKERS = 4  # embedding processes used by default (each holds a model copy)


def ingest_directory(root: Path, settings: Settings, *, progress: bool = True, rebuild: bool = False,
                     repair: bool = False, wait: float = 0.0, embedder=None,
                     on_failure: Callable[[str, str], None] | None = None) -> IngestReport:
    """Bring the store at `settings.store` in line with the files under `root`.

    Unchanged files (same size and mtime, or same sha256) are skipped without parsing; changed files have their
    chunks replaced; files gone from `root` are deleted. Bad files are recorded as failed with a one-line reason
    (also passed to `on_failure`) and the rest still lands. `repair` first removes duplicate rows.

    The whole run holds the store's writer lock: another writer raises `StoreLocked` at once, or after waiting
    up to `wait` seconds. A store that is not ours raises `StoreError` and is left untouched.
    """
    started = time.perf_counter()
    report = IngestReport()
    with writing(settings, wait=wait):
        embedder = embedder or embedder_for(settings, rebuild=rebuild)
        archive, plan = begin(root, settings, embedder, report, rebuild=rebuild, repair=repair)
        if plan.todo:
            _process(plan.todo, archive, embedder, settings, report, progress)
        finish(archive, plan, report, on_failure)
    report.seconds = time.perf_counter() - started
    return report


class StoreWriteError(OSError):
    """Writing to the store failed. Never taken for the failure of the file being read when it happened."""


# --- the streaming part: parse+chunk here, embed in workers (or inline), write here ------------------------------

@dataclass
class _Batch:
    """Chunks sent to the model together, and the documents whose last chunk is among them or before."""

    pairs: list[tuple[Todo, Chunk]]
    vectors: list[Any]  # a stored vector reused by content hash, or None where the model supplies one
    texts: list[str]  # what the model embeds: the search texts of the chunks without a vector
    future: "Future[Any] | None"
    documents: list[dict[str, Any]]
    embedded_at: float | None = None  # time.time() the model's vectors were ready


def embed_workers(settings: Settings, todo_bytes: int) -> int:
    """How many embedding processes to use: `settings.embed_workers`, or by default one per core (at most
    MAX_AUTO_WORKERS) when there are several cores and enough work to repay loading a model copy in each."""
    if settings.embed_workers:
        return settings.embed_workers
    cores = available_cores()
    return min(cores, MAX_AUTO_WORKERS) if cores > 1 and todo_bytes >= POOL_MIN_BYTES else 1


def _process(todo: list[Todo], archive: Archive, embedder, settings: Settings, report: IngestReport,
             progress: bool) -> None:
    workers = embed_workers(settings, sum(item.stat.st_size for item in todo))
    with (EmbedPool(embedder, workers) if workers > 1 else contextlib.nullcontext(embedder) as encoder,
          PageReader(settings.ocr, ocr_workers(settings.ocr_workers)) if settings.ocr != "off"
          else contextlib.nullcontext() as ocr):
        _Stream(archive, embedder, encoder, workers, report, _Progress(todo, progress), ocr).run(todo, settings)


class _Progress:
    """Bars for files and chunks on a terminal; in a log, one line every few seconds, by bytes parsed."""

    def __init__(self, todo: list[Todo], enabled: bool) -> None:
        self.log = LogLine("ingest", sum(item.stat.st_size for item in todo), "MB", scale=1e6) \
            if enabled and not to_terminal() else None
        self.files_total, self.files, self.chunks, self.started = len(todo), 0, 0, time.monotonic()
        bars = enabled and self.log is None
        self.files_bar = tqdm(total=len(todo), desc="files", unit="file", disable=not bars)
        self.chunks_bar = tqdm(desc="chunks", unit="chunk", disable=not bars)

    def file_done(self, item: Todo) -> None:
        self.files += 1
        self.files_bar.update(1)
        if self.log:
            self._postfix()
            self.log.update(item.stat.st_size)

    def chunks_done(self, n: int) -> None:
        self.chunks += n
        self.chunks_bar.update(n)
        if self.log:  # a long PDF parses as one file: the chunks keep the line coming
            self._postfix()
            self.log.update(0)

    def _postfix(self) -> None:
        rate = self.chunks / max(time.monotonic() - self.started, 1e-9)
        self.log.set_postfix({"files": f"{self.files}/{self.files_total}", "chunks": f"{self.chunks} ({rate:.1f}/s)"})

    def close(self) -> None:
        if self.log:
            self._postfix()
            self.log.close()
        self.files_bar.close(), self.chunks_bar.close()


class _Stream:
    """Parses files in order in this process while the model embeds earlier chunks; writes in order.

    At most 2 batches per worker are in flight, so memory stays bounded however long the corpus. A document's
    row is written only after all its chunks (it rides on the batch holding its last chunk): the commit point.
    """

    def __init__(self, archive: Archive, embedder, encoder, workers: int, report: IngestReport,
                 progress: _Progress, ocr: PageReader | None) -> None:
        self.archive, self.embedder, self.encoder, self.workers = archive, embedder, encoder, workers
        self.ocr = ocr  # reads the PDF pages that need OCR (None: --ocr off)
        self.report = report
        self.schema = chunk_schema(archive.meta.dim)
        self.progress = progress
        self.unembedded: list[tuple[Todo, Chunk]] = []  # gathered across files, so small files share a batch
        self.finished: list[dict[str, Any]] = []  # document rows waiting for the next batch
        self.inflight: deque[_Batch] = deque()
        self.pending: list[dict[str, Any]] = []  # embedded chunk rows not yet written
        self.pending_docs: list[dict[str, Any]] = []
        self.to_clear: list[str] = []  # sources whose old chunks go before their first new ones
        self.cleared: set[str] = set()
        self.failed: set[str] = set()
        self.reuse: dict[str, Any] = {}  # content_hash -> vector of chunks stored before this run

    def run(self, todo: list[Todo], settings: Settings) -> None:
        tokenizer = self.embedder.tokenizer
        try:
            for item in todo:
                self._start(item)
                chunks = 0
                try:
                    parsed = parse(item.path, self.ocr)
                    for chunk in chunk_sections(parsed.sections, tokenizer, max_tokens=settings.chunk_tokens,
                                                overlap=settings.chunk_overlap):
                        self.unembedded.append((item, chunk))
                        chunks += 1
                        if len(self.unembedded) >= EMBED_BATCH:
                            self._submit(self.unembedded[:EMBED_BATCH], documents=True)
                            del self.unembedded[:EMBED_BATCH]
                except StoreWriteError:  # the store, not this file: the run stops (a rerun resumes)
                    raise
                except Exception as exc:  # a bad file, or a parser bug on one file, must not sink the corpus
                    self._fail(item, failure_reason(exc), retry=isinstance(exc, OSError))
                else:
                    if changed_since_planned(item):
                        self._fail(item, CHANGED_WHILE_READ, retry=True)
                    elif chunks:
                        self._done(item, parsed, chunks)
                    else:
                        self._fail(item, "no extractable text")
                self.progress.file_done(item)
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
            self.progress.close()

    def _start(self, item: Todo) -> None:
        if not item.is_new:
            self.reuse.update(self.archive.vectors_for([item.rel]))
        self.to_clear.append(item.rel)

    def _done(self, item: Todo, parsed: Parsed, chunks: int) -> None:
        self.report.done(item, parsed.pages, chunks, parsed.ocr)
        self.finished.append(document_row(item, parsed.pages, chunks, parsed.ocr))

    def _fail(self, item: Todo, reason: str, *, retry: bool = False) -> None:
        self.report.failures.append((item.rel, reason))
        self.failed.add(item.rel)
        self.unembedded = [(i, c) for i, c in self.unembedded if i.rel != item.rel]
        self.pending = [row for row in self.pending if row["source"] != item.rel]
        if item.rel in self.cleared:  # chunks of it already written: delete them again
            self.to_clear.append(item.rel)
        self.finished.append(failed_row(item.raw, item.path, item.sha, reason, retry=retry, ocr_mode=item.ocr_mode))

    def _submit(self, pairs: list[tuple[Todo, Chunk]], *, documents: bool) -> None:
        """Send the chunks without a reusable vector to the model; `documents`: the finished rows go along."""
        vectors = [self.reuse.get(chunk.content_hash) for _, chunk in pairs]
        texts = [chunk.search_text for (_, chunk), vector in zip(pairs, vectors) if vector is None]
        started = time.perf_counter()
        try:
            future = self.encoder.submit(texts) if texts else None
        except BrokenProcessPool as exc:
            self._embed_here(exc)
            future = self.encoder.submit(texts)
        self.report.embed_seconds += time.perf_counter() - started
        batch = _Batch(pairs, vectors, texts, future, self.finished if documents else [])
        if future is not None:  # stamped when the worker finishes, not when this process gets round to the vectors
            future.add_done_callback(lambda _: setattr(batch, "embedded_at", time.time()))
        self.inflight.append(batch)
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
                batch.embedded_at = time.time()
            self.report.embed_seconds += time.perf_counter() - started
            self.report.embedded += sum(vector is None for vector in batch.vectors)
            # the callback runs just after result() is released: it may not have run yet
            self.report.batch_embedded(batch.embedded_at or time.time(), len(batch.texts))
            batch.vectors = [next(fresh) if vector is None else vector for vector in batch.vectors]
        self.inflight.popleft()
        self.pending.extend(chunk_row(item.rel, chunk, vector) for (item, chunk), vector in zip(batch.pairs, batch.vectors)
                            if item.rel not in self.failed)
        self.pending_docs.extend(batch.documents)
        self.progress.chunks_done(len(batch.pairs))
        if len(self.pending) >= WRITE_BATCH or len(self.pending_docs) >= 256:
            self._flush()

    def _embed_here(self, exc: BaseException) -> None:
        """The workers died (killed for memory, or unable to start): carry on embedding in this process."""
        if self.encoder is not self.embedder:
            tqdm.write(f"embedding workers failed ({exc}); embedding in this process instead", file=sys.stderr)
            self.encoder, self.workers = self.embedder, 1

    def _flush(self) -> None:
        rows = pa.Table.from_pylist(self.pending, schema=self.schema) if self.pending else None
        try:
            self.archive.write(rows, replace_sources=self.to_clear, documents=self.pending_docs)
        except OSError as exc:  # a full disk, say; it may surface while a file is being chunked
            raise StoreWriteError(exc.errno, exc.strerror or str(exc)) from exc
        self.cleared.update(self.to_clear)
        self.pending, self.pending_docs, self.to_clear = [], [], []

