"""The Ray engine: the same ingest as `pipeline.ingest.local`, spread over a Ray cluster with Ray Data.

files to do (planned here, as the local engine plans) -> parsed, chunked and embedded in an actor pool (one
model per actor, one CPU each; a changed file's chunks whose search text is stored already keep their stored
vector, as with the local engine) -> Lance fragments written by tasks (lance-ray) -> committed once, here,
then the `documents` rows (the commit point) -> indexes. Nothing reaches the store before every file is done,
so a killed driver leaves what the last finished run left, and a rerun redoes exactly the unfinished files.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.archive.schema import SEARCH_COLUMN, chunk_schema
from pipeline.archive.store import Archive, sql_in, vectors_by_hash
from pipeline.cluster import ray_session
from pipeline.config import Settings
from pipeline.gguf import model_cache_dir
from pipeline.ingest.chunk import chunk_sections
from pipeline.ingest.embed import Embedder
from pipeline.ingest.ocr import PageReader
from pipeline.ingest.parse import OcrTally, parse
from pipeline.ingest.plan import (CHANGED_WHILE_READ, IngestReport, Todo, begin, changed_since, chunk_row,
                                  document_row, embedder_for, failed_row, failure_reason, finish, writing)

FILES_PER_CALL = 4  # files an actor parses, chunks and embeds per call
WRITE_ROWS = 4096  # chunks per Lance fragment write

# columns the parse step adds to every chunk row, for the driver's per-file account; dropped before writing
_FILE_COLUMNS = [pa.field("file_chunks", pa.int32()), pa.field("file_pages", pa.int32()),
                 pa.field("file_ocr", pa.string()), pa.field("error", pa.string()), pa.field("retry", pa.bool_())]
REUSED = "reused"  # the column that marks a chunk row whose vector is the one stored before (not embedded again)


def ingest_directory_ray(root: Path, settings: Settings, *, progress: bool = True, rebuild: bool = False,
                         repair: bool = False, wait: float = 0.0, embedder=None,
                         on_failure: Callable[[str, str], None] | None = None) -> IngestReport:
    """`pipeline.ingest.local.ingest_directory` on Ray: same plan, lock, store, rows and vectors.

    Connects to `settings.ray_address` (or RAY_ADDRESS), or starts a local Ray for the run; a Ray already
    initialised in this process is used as it is. The store's writer lock is held here, by the driver.
    """
    started = time.perf_counter()
    report = IngestReport()
    with writing(settings, wait=wait) as lock:
        embedder = embedder or embedder_for(settings, rebuild=rebuild)
        archive, plan = begin(root, settings, embedder, report, rebuild=rebuild, repair=repair)
        if plan.todo:
            if archive.meta.embed_backend != "torch":
                embedder.onnx_file  # exported here, once, before the actors on this machine start
            with ray_session(settings.ray_address, progress=progress):
                account = _process(plan.todo, archive, settings)
            lock.check()  # still ours: nothing is committed by a writer that lost the store
            account.commit(plan.todo, archive, report)
        finish(archive, plan, report, on_failure)
    report.seconds = time.perf_counter() - started
    return report


def embed_actors(settings: Settings) -> int:
    """Actors in the embedding pool: `settings.embed_workers`, or one per CPU of the cluster."""
    import ray

    return settings.embed_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))


def _process(todo: list[Todo], archive: Archive, settings: Settings) -> "_Account":
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    dataset = archive.chunks.to_lance()
    schema = chunk_schema(archive.meta.dim)
    files = [{"rel": item.rel, "path": os.path.abspath(item.path), "size": item.stat.st_size,
              "mtime_ns": item.stat.st_mtime_ns, "changed": not item.is_new}
             for item in todo]  # paths the same on every node
    actors = embed_actors(settings)
    # Write tasks ask Ray for no CPU: the actors hold one each, and a task waiting for a CPU that they
    # hold would wait forever. At most one such task per actor runs at a time.
    light = {"num_cpus": 0, "compute": TaskPoolStrategy(size=actors)}
    results = (
        ray.data.from_items(files, override_num_blocks=min(len(files), 8 * actors))
        .map_batches(_EmbedActor, batch_size=FILES_PER_CALL, batch_format="pyarrow", num_cpus=1,
                     compute=ActorPoolStrategy(size=actors),
                     fn_constructor_kwargs={"embedder": settings.embedder, "backend": archive.meta.embed_backend,
                                            "quantization": archive.meta.quantization,
                                            "model_cache": str(model_cache_dir()),
                                            "batch_size": settings.embed_batch_size,
                                            "chunk_tokens": settings.chunk_tokens, "overlap": settings.chunk_overlap,
                                            "ocr": settings.ocr,
                                            "stored": {"uri": dataset.uri, "version": dataset.version,
                                                       "storage_options": archive.storage_options}})
        .map_batches(_write_fragments, batch_size=WRITE_ROWS, batch_format="pyarrow", **light,
                     fn_kwargs={"uri": dataset.uri, "schema": schema,
                                "storage_options": archive.storage_options,
                                "data_storage_version": dataset.data_storage_version})
    )
    account = _Account()
    for row in results.iter_rows():
        account.add(row)
    return account


@dataclass
class _File:
    rows: int = 0  # chunk rows written
    chunks: int = 0  # chunks the parse step made
    pages: int | None = None
    ocr: OcrTally | None = None
    error: str | None = None
    retry: bool = False  # the failure is temporary (vanished, changed while read): tried again next run
    reused: int = 0  # of those rows, the ones written with their stored vector


class _Account:
    """The driver's record of what the workers wrote: fragments, per file the rows against the chunks made, and
    the chunks written per embedding batch (by the time the actor finished it).

    A file whose rows and chunks disagree (a retried task written twice, or a lost one) stops the run before
    anything is committed.
    """

    def __init__(self) -> None:
        self.fragments: list[Any] = []
        self.files: dict[str, _File] = {}
        self.batches: dict[float, int] = {}  # embedded_at -> chunks

    def add(self, row: dict[str, Any]) -> None:
        self.fragments.extend(pickle.loads(row["fragments"]))
        for rel, written in json.loads(row["files"]).items():  # _write_fragments' account: _File's fields
            seen = self.files.setdefault(rel, _File())
            seen.rows += written["rows"]
            seen.reused += written["reused"]
            seen.chunks, seen.pages = written["chunks"], written["pages"]
            seen.error, seen.retry = written["error"], written["retry"]
            seen.ocr = OcrTally(**json.loads(written["ocr"])) if written["ocr"] else None
        for at, chunks in json.loads(row["batches"]):  # a batch may straddle two writes
            self.batches[at] = self.batches.get(at, 0) + chunks

    def commit(self, todo: list[Todo], archive: Archive, report: IngestReport) -> None:
        """Replace the chunks of every file done, commit the workers' fragments once, then the document rows."""
        import lance

        documents = []
        for item in todo:
            seen = self.files.get(item.rel)
            if seen is None or (seen.error is None and seen.rows != seen.chunks):
                raise RuntimeError(f"the Ray pipeline lost or duplicated chunks of {item.rel} "
                                   f"({0 if seen is None else seen.rows} written, "
                                   f"{0 if seen is None else seen.chunks} made); nothing was committed")
            if seen.error is None:
                report.done(item, seen.pages, seen.chunks, seen.ocr)
                report.embedded += seen.chunks - seen.reused
                documents.append(document_row(item, seen.pages, seen.chunks, seen.ocr))
            else:
                report.failures.append((item.rel, seen.error))
                documents.append(failed_row(item.raw, item.path, item.sha, seen.error, retry=seen.retry,
                                            ocr_mode=item.ocr_mode))
        for at, chunks in sorted(self.batches.items()):
            report.batch_embedded(at, chunks)
        archive.write(None, replace_sources=[item.rel for item in todo], documents=[])
        if self.fragments:
            uri, options = archive.chunks.to_lance().uri, archive.storage_options
            latest = lance.dataset(uri, storage_options=options)
            lance.LanceDataset.commit(uri, lance.LanceOperation.Append(self.fragments),
                                      read_version=latest.version, storage_options=options)
            archive.chunks.checkout_latest()
        archive.write(None, replace_sources=[], documents=documents)


# --- what runs on the workers -------------------------------------------------------------------------------------

def _parse_files(batch: pa.Table, *, tokenizer: Any, reader: PageReader | None, chunk_tokens: int,
                 overlap: int) -> pa.Table:
    """Parse and chunk the files of `batch` (columns rel, path, size, mtime_ns) into chunk rows without vectors,
    as the local engine does (OCR read here, one page at a time); a file that fails becomes one row with its
    `error` (and no text)."""
    rows: list[dict[str, Any]] = []
    for rel, path, size, mtime_ns in zip(*(batch[name].to_pylist() for name in ("rel", "path", "size", "mtime_ns"))):
        retry = False
        try:
            parsed = parse(Path(path), reader)
            chunks = [chunk_row(rel, chunk, None) for chunk in
                      chunk_sections(parsed.sections, tokenizer, max_tokens=chunk_tokens, overlap=overlap)]
            error = None if chunks else "no extractable text"
            if changed_since(path, size, mtime_ns):
                error, retry = CHANGED_WHILE_READ, True
        except Exception as exc:  # a bad file, or a parser bug on one file, must not sink the corpus
            chunks, error, retry = [], failure_reason(exc), isinstance(exc, OSError)
        if error:
            rows.append({"source": rel, "file_chunks": 0, "file_pages": None, "file_ocr": None, "error": error,
                         "retry": retry})
        else:
            tally = json.dumps(asdict(parsed.ocr))
            rows.extend(row | {"file_chunks": len(chunks), "file_pages": parsed.pages, "file_ocr": tally,
                               "error": None, "retry": False} for row in chunks)
    return pa.Table.from_pylist(rows, schema=_unembedded_schema())


def _unembedded_schema() -> pa.Schema:
    fields = [field for field in chunk_schema(1) if field.name != "vector"]
    return pa.schema(fields + _FILE_COLUMNS)


class _EmbedActor:
    """One model copy, one thread: the local engine's embedder (the store's backend), on a Ray actor, parsing and
    chunking the files it embeds. Parsing here, not in tasks of its own, keeps each node's work on that node: as
    tasks they ran on the head, whose core then could not feed a second node's actor (session 15: that core
    busy 99.6%, the other node's 78-84%)."""

    def __init__(self, embedder: str, backend: str, quantization: str, model_cache: str, batch_size: int,
                 chunk_tokens: int, overlap: int, ocr: str, stored: dict[str, Any]) -> None:
        os.environ["ANALYZE_MODEL_CACHE"] = model_cache  # the driver's, like the corpus paths the same on every node
        self.embedder = Embedder(embedder, backend=backend, quantization=quantization, batch_size=batch_size,
                                 threads=1)
        self.embedder.load()  # now, before the first batch arrives
        self.parsing = {"tokenizer": self.embedder.tokenizer, "chunk_tokens": chunk_tokens, "overlap": overlap,
                        "reader": None if ocr == "off" else PageReader(ocr, workers=1)}  # the model's own tokenizer
        self.stored = stored  # the chunks table as the driver planned against it (uri, version, storage_options)
        self._planned = None  # that version, opened on the first changed file

    def __call__(self, files: pa.Table) -> pa.Table:
        batch = _parse_files(files, **self.parsing)
        ok = np.asarray(batch["error"].is_null())
        changed = [rel for rel, flag in zip(files["rel"].to_pylist(), files["changed"].to_pylist()) if flag]
        known = self._stored_vectors(changed)
        vectors = np.zeros((batch.num_rows, self.embedder.dim), dtype=np.float32)
        reused = np.zeros(batch.num_rows, dtype=bool)
        for n, digest in enumerate(batch["content_hash"].to_pylist()):
            if ok[n] and digest in known:
                vectors[n], reused[n] = known[digest], True
        fresh = ok & ~reused
        texts = [text for text, keep in zip(batch[SEARCH_COLUMN].to_pylist(), fresh) if keep]
        vectors[fresh] = self.embedder.encode(texts)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), self.embedder.dim)
        done = pa.array(np.full(batch.num_rows, time.time()), pa.float64())  # this batch's stamp, on every row
        return (batch.append_column("vector", column).append_column(REUSED, pa.array(reused))
                .append_column("embedded_at", done))

    def _stored_vectors(self, sources: list[str]) -> dict[str, np.ndarray]:
        """content_hash -> stored vector of the chunks of `sources` (changed files) in the version the driver
        planned against: their old rows are deleted only when the driver commits."""
        if not sources:
            return {}
        if self._planned is None:
            import lance

            self._planned = lance.dataset(self.stored["uri"], version=self.stored["version"],
                                          storage_options=self.stored["storage_options"])
        return vectors_by_hash(self._planned.to_table(columns=["content_hash", "vector"],
                                                      filter=sql_in("source", sources)))


def _write_fragments(batch: pa.Table, *, uri: str, schema: pa.Schema, storage_options: dict[str, str] | None,
                     data_storage_version: str) -> pa.Table:
    """Write the chunk rows of `batch` as uncommitted Lance fragments; return them, the per-file account (rows
    written, of which with a stored vector) and the rows per embedding batch."""
    from lance_ray.fragment import write_fragment

    ok = batch.filter(batch["error"].is_null())
    written = write_fragment([ok.select(schema.names).cast(schema)], uri, schema=schema,
                             storage_options=storage_options,
                             data_storage_version=data_storage_version) if ok.num_rows else []
    files: dict[str, dict[str, Any]] = {}
    for rel, reused, chunks, pages, ocr, error, retry in zip(*(batch[name].to_pylist() for name in (
            "source", REUSED, "file_chunks", "file_pages", "file_ocr", "error", "retry"))):
        entry = files.setdefault(rel, {"rows": 0, "reused": 0, "chunks": chunks, "pages": pages, "ocr": ocr,
                                       "error": error, "retry": retry})
        entry["rows"] += error is None
        entry["reused"] += bool(reused)  # only a row that parsed has a stored vector
    batches = ok.group_by("embedded_at").aggregate([("embedded_at", "count")]).to_pylist()
    return pa.table({"fragments": [pickle.dumps([fragment for fragment, _ in written])],
                     "files": [json.dumps(files)],
                     "batches": [json.dumps([[b["embedded_at"], b["embedded_at_count"]] for b in batches])]})
