"""Archival memory on disk or object storage: the LanceDB store's lifecycle (create, open, pin, write, indexes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.archive.location import Location
from pipeline.archive.lock import LOCK_FILE
from pipeline.archive.schema import (CHUNKS, DOCUMENT_SCHEMA, DOCUMENTS, META_FILE, SEARCH_COLUMN, StoreError,
                                     StoreMeta, check_format, chunk_schema, read_meta, write_meta)
from pipeline.archive.search import Fusion, search_chunks, vector_index
from pipeline.faults import fault_point
from pipeline.types import SearchResult

VECTOR_INDEX_MIN_ROWS = 50_000  # below this a flat scan is faster than an IVF index pays back
OUR_TABLES = (CHUNKS, DOCUMENTS)  # the only tables pagefault creates, and so the only ones it ever drops
READ_CONSISTENCY_S = 5.0  # how often an unpinned reader looks for versions that another process wrote


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_in(column: str, values) -> str:
    """The filter for rows whose `column` is one of `values` (strings)."""
    return f"{column} IN ({', '.join(map(sql_str, values))})"


def vectors_by_hash(rows: pa.Table) -> dict[str, Any]:
    """content_hash -> vector of stored chunk `rows` (those columns): what a re-ingest of their files reuses."""
    return dict(zip(rows["content_hash"].to_pylist(), rows["vector"].to_numpy(zero_copy_only=False)))


class Archive:
    """A LanceDB store of document chunks. Open read-only with `Archive.open`, for writing with `Archive.create`."""

    def __init__(self, location: Location, db, meta: StoreMeta, *, embedder=None,
                 fusion: Fusion | None = None) -> None:
        self.path = location  # prints as the path or s3:// URI it was opened with
        self.fusion = fusion or Fusion()
        self.db = db
        self.meta = meta
        self.storage_options = location.storage_options()  # what Lance needs to reach object storage
        if embedder is None:
            from pipeline.ingest.embed import Embedder

            # cheap: the model itself loads on first encode
            embedder = Embedder(meta.embedder, backend=meta.embed_backend, quantization=meta.quantization)
        self.embedder = embedder
        self.chunks = db.open_table(CHUNKS)
        self.documents = db.open_table(DOCUMENTS)

    # --- opening ---------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str | Location, *, version: int | None = None, embedder=None,
             fusion: Fusion | None = None) -> "Archive":
        """Open an existing store; `version` pins the chunks table to one LanceDB version (reproducible reads).

        `fusion` is how hybrid search merges its rankings (default: Settings' defaults). Unpinned, the tables
        follow new versions written elsewhere (checked every READ_CONSISTENCY_S).
        """
        location = Location.of(path)
        meta = read_meta(location)
        if meta is None:
            raise StoreError(f"no archive at {location}: run `analyze ingest DIR` first (or pass --store)")
        check_format(location, meta)
        archive = cls(location, location.connect(read_consistency_interval=READ_CONSISTENCY_S), meta,
                      embedder=embedder, fusion=fusion)
        if version is not None:
            archive.pin(version)
        return archive

    @classmethod
    def create(cls, path: Path | str | Location, meta: StoreMeta, *, embedder=None,
               rebuild: bool = False) -> "Archive":
        """Open a store for ingest, creating it if needed. Other settings or another store format are an error
        unless `rebuild`, which drops pagefault's own tables: old and new chunks never mix.

        A path that is a file, a non-empty directory or prefix that is not a pagefault store, or a store holding
        tables pagefault did not create is refused (`StoreError`) and left untouched, `rebuild` or not.
        """
        location = Location.of(path)
        names = check_ours(location)
        existing = read_meta(location)
        if existing is not None and existing != meta and not rebuild:
            check_format(location, existing)
            raise StoreError("the store at {} was built with other settings ({}); rerun with --rebuild to "
                             "re-embed everything".format(location, "; ".join(existing.mismatch(meta))))
        if not location.remote:
            Path(location.uri).mkdir(parents=True, exist_ok=True)
        if existing is None:  # first of all, so that from its first table on the store is recognisably ours
            write_meta(location, meta)
        db = location.connect()
        if rebuild or existing != meta:
            for name in OUR_TABLES:
                if name in names:
                    db.drop_table(name)
            names = set()
        if CHUNKS not in names:
            db.create_table(CHUNKS, schema=chunk_schema(meta.dim))
        if DOCUMENTS not in names:
            db.create_table(DOCUMENTS, schema=DOCUMENT_SCHEMA)
        elif "path_bytes" not in db.open_table(DOCUMENTS).schema.names:  # format 2 as first landed, without it
            raise StoreError(f"the store at {location} has an older format 2 layout; rebuild it with "
                             "`analyze ingest DIR --rebuild`")
        if existing is not None and existing != meta:  # rebuilt with other settings: they hold from now on
            write_meta(location, meta)
        return cls(location, db, meta, embedder=embedder)

    def pin(self, version: int | None = None) -> None:
        """Read the chunks table at `version` (default: the current one) from now on, whatever ingest writes."""
        self.chunks.checkout(self.version if version is None else version)

    @property
    def version(self) -> int:
        return int(self.chunks.version)

    def count(self) -> int:
        return int(self.chunks.count_rows())

    # --- documents ---------------------------------------------------------------------------------------------

    def document_rows(self) -> dict[str, dict[str, Any]]:
        return {row["path"]: row for row in self.documents.to_arrow().to_pylist()}

    def vectors_for(self, sources: list[str]) -> dict[str, Any]:
        """content_hash -> vector of the chunks already stored for `sources` (reused when re-ingesting)."""
        if not sources:
            return {}
        return vectors_by_hash(self.chunks.search().where(sql_in("source", sources))
                               .select(["content_hash", "vector"]).limit(None).to_arrow())

    def write(self, chunk_rows: pa.Table | None, *, replace_sources: list[str], documents: list[dict[str, Any]]) -> None:
        """Replace the chunks of `replace_sources`, add `chunk_rows`, then upsert `documents` (the commit point).

        A document row marked ok is written only after all its chunks, and its old chunks are always deleted
        before new ones land, so a crash at any moment leaves nothing that a rerun would duplicate.
        """
        fault_point("store.write")
        if replace_sources:
            self.chunks.delete(sql_in("source", replace_sources))
            fault_point("store.write.deleted")
        if chunk_rows is not None and chunk_rows.num_rows:
            if chunk_rows.column(SEARCH_COLUMN).null_count:
                raise ValueError(f"chunk rows without {SEARCH_COLUMN}: it is what search embeds and indexes")
            self.chunks.add(chunk_rows)
            fault_point("store.write.added")  # chunks landed, their document rows not yet
        if documents:
            table = pa.Table.from_pylist(documents, schema=DOCUMENT_SCHEMA)
            (self.documents.merge_insert("path").when_matched_update_all().when_not_matched_insert_all()
             .execute(table))

    def duplicates(self) -> dict[str, int]:
        """Rows beyond the first for each chunk id and each document path (left by writers that overlapped
        before the store had a writer lock); all zero in a healthy store."""
        ids = _columns(self.chunks, ["chunk_id"])["chunk_id"]
        paths = _columns(self.documents, ["path"])["path"]
        return {"chunks": len(ids) - len(ids.unique()), "documents": len(paths) - len(paths.unique())}

    def repair_duplicates(self) -> dict[str, int]:
        """Keep one row per chunk id and per document path; returns how many extra rows there were.

        Crash-safe: the document rows of the affected files (their commit points) go first, so a crash in
        between leaves those files looking new to the next ingest, which replaces their chunks.
        """
        found = self.duplicates()
        if not any(found.values()):
            return found
        listing = _columns(self.chunks, ["chunk_id", "source"]).to_pylist()
        seen: set[str] = set()
        sources: set[str] = set()
        for row in listing:
            if row["chunk_id"] in seen:
                sources.add(row["source"])
            seen.add(row["chunk_id"])
        latest: dict[str, dict[str, Any]] = {}
        repeated: set[str] = set()
        for row in self.documents.to_arrow().to_pylist():
            old = latest.get(row["path"])
            if old is not None:
                repeated.add(row["path"])
            if old is None or (row["ingested_at"] or "") >= (old["ingested_at"] or ""):
                latest[row["path"]] = row
        affected = sorted(sources | repeated)
        self.documents.delete(sql_in("path", affected))
        rows = None
        if sources:
            stored = self.chunks.search().where(sql_in("source", sorted(sources))).limit(None).to_arrow()
            first: dict[str, int] = {}
            for index, chunk_id in enumerate(stored["chunk_id"].to_pylist()):
                first.setdefault(chunk_id, index)
            rows = stored.select(chunk_schema(self.meta.dim).names).take(sorted(first.values()))
        self.write(rows, replace_sources=sorted(sources), documents=[latest[p] for p in affected])
        return found

    def delete_documents(self, paths: list[str]) -> None:
        if paths:
            self.chunks.delete(sql_in("source", paths))
            self.documents.delete(sql_in("path", paths))

    def refresh_indexes(self) -> dict[str, float]:
        """Build the full-text index (and the vector index once the table is large); fold new rows into them.

        Returns the seconds each step took (`fts`, `source`, `vector`: building; `optimize`: folding in).
        """
        from lancedb.index import FTS, BTree

        names = {index.name: index for index in self.chunks.list_indices()}
        rows = self.count()
        steps: dict[str, float] = {}

        def step(name: str, work) -> None:
            started = time.perf_counter()
            work()
            steps[name] = round(time.perf_counter() - started, 2)

        if not any(SEARCH_COLUMN in index.columns for index in names.values()):
            step("fts", lambda: self.chunks.create_index(SEARCH_COLUMN, config=FTS(with_position=True), replace=True))
        if not any("source" in index.columns for index in names.values()):
            step("source", lambda: self.chunks.create_index("source", config=BTree(), replace=True))
        has_vector_index = any("vector" in index.columns for index in names.values())
        if rows >= VECTOR_INDEX_MIN_ROWS and not has_vector_index:
            step("vector", lambda: self.chunks.create_index("vector", config=vector_index()))
        step("optimize", lambda: (self.chunks.optimize(), self.documents.optimize()))
        return steps

    # --- search --------------------------------------------------------------------------------------------------

    def search(self, query: str, *, mode: str = "hybrid", top_k: int = 5, page: int = 0) -> SearchResult:
        """Page `page` (0-based) of `top_k` hits for `query`, with the total of matches (see `search_chunks`)."""
        return search_chunks(self.chunks, self.embedder, query, mode=mode, top_k=top_k, page=page, fusion=self.fusion)


def _columns(table, names: list[str]) -> pa.Table:
    """Every row of `table`, only the columns `names` (`to_arrow()` would read the vectors and texts too)."""
    return table.search().select(names).limit(None).to_arrow()


def _tables(names: list[str]) -> set[str]:
    """The LanceDB tables among the entries `names` of a store (a local directory or an s3:// prefix)."""
    return {name[:-len(".lance")] for name in names if name.endswith(".lance")}


def check_ours(location: Location | Path | str) -> set[str]:
    """`StoreError` unless `location` is free for a store, or a store pagefault made holding only its own tables;
    the tables it holds."""
    location = Location.of(location)
    if location.is_file():
        raise StoreError(f"--store {location} is a file, not a store directory; choose another --store")
    names = location.list_names()
    if META_FILE not in names:
        if any(name not in (LOCK_FILE, META_FILE + ".tmp") for name in names):
            kind = "prefix" if location.remote else "directory"
            raise StoreError(f"--store {location} is a non-empty {kind} that is not a pagefault store (no "
                             f"{META_FILE}); refusing to touch it: choose another --store")
        return set()
    tables = _tables(names)
    foreign = sorted(tables - set(OUR_TABLES))
    if foreign:
        raise StoreError(f"the store at {location} holds tables pagefault did not create ({', '.join(foreign)}); "
                         "refusing to touch it: move them out or choose another --store")
    return tables
