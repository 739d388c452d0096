"""Never touch what isn't ours: a foreign LanceDB directory, foreign tables, a file given as --store."""

from __future__ import annotations

import lancedb
import pyarrow as pa
import pytest
from click.testing import CliRunner

from pipeline.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture
def docs(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("A short note about rivers and their deltas.")
    return tmp_path / "docs"


def user_table(path, name="chunks"):
    db = lancedb.connect(str(path))
    db.create_table(name, data=pa.table({"id": [1, 2, 3], "text": ["mine", "not", "yours"]}))
    return lambda: lancedb.connect(str(path)).open_table(name).to_arrow().to_pylist()


def ingest(docs, store, *extra):
    return CliRunner().invoke(main, ["ingest", str(docs), "--store", str(store), "-q", *extra])


@pytest.mark.parametrize("extra", [[], ["--rebuild"]])
def test_a_foreign_lancedb_directory_keeps_its_rows(docs, tmp_path, extra):
    store = tmp_path / "theirs"
    rows = user_table(store)
    before = sorted(p.name for p in store.iterdir())
    out = ingest(docs, store, *extra)
    assert out.exit_code == 1 and out.output.count("\n") == 1 and "Traceback" not in out.output
    assert "not a pagefault store (no pagefault.json)" in out.output and "refusing to touch it" in out.output
    assert rows() == [{"id": 1, "text": "mine"}, {"id": 2, "text": "not"}, {"id": 3, "text": "yours"}]
    assert sorted(p.name for p in store.iterdir()) == before  # not even a lock file was left in it


def test_a_store_with_tables_we_did_not_create_is_refused_and_rebuild_drops_only_ours(docs, tmp_path):
    store = tmp_path / "store"
    assert ingest(docs, store).exit_code == 0
    rows = user_table(store, "my_notes")
    for extra in ([], ["--rebuild"]):
        out = ingest(docs, store, *extra)
        assert out.exit_code == 1 and "holds tables pagefault did not create (my_notes)" in out.output
    assert len(rows()) == 3
    (store / "my_notes.lance").rename(tmp_path / "my_notes.lance")  # moved out: ours again
    (store / "README.txt").write_text("the user's own note beside the tables")
    out = ingest(docs, store, "--rebuild")
    assert out.exit_code == 0 and "1 new" in out.output
    assert (store / "README.txt").read_text() == "the user's own note beside the tables"


def test_a_file_as_store_is_one_line(docs, tmp_path):
    store = tmp_path / "archive.db"
    store.write_text("not a directory")
    for args in (["ingest", str(docs)], ["status"], ["search", "rivers"]):
        out = CliRunner().invoke(main, [*args, "--store", str(store)])
        assert out.exit_code == 1 and out.output.count("\n") == 1 and "Traceback" not in out.output, out.output
    assert "is a file, not a store directory" in CliRunner().invoke(main, ["ingest", str(docs), "--store",
                                                                            str(store)]).output
    assert store.read_text() == "not a directory"


def test_an_empty_directory_is_a_fine_new_store(docs, tmp_path):
    (tmp_path / "empty").mkdir()
    assert ingest(docs, tmp_path / "empty").exit_code == 0
