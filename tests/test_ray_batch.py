"""`analyze batch --engine ray`: agents on Ray actors over one pinned version; records written once, here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from click.testing import CliRunner  # noqa: E402

from pipeline.cli import main  # noqa: E402
from pipeline.testing import FakeEndpoint, Fault, tool_reply  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent


class Echo:
    """An endpoint handler: searches, then answers each question with itself, fails those in `fail`, notes when
    each request came."""

    def __init__(self, fail: set[str]) -> None:
        self.fail, self.asked, self.times, self.lock = set(fail), [], [], threading.Lock()

    def __call__(self, request: dict):
        question = next(m["content"] for m in reversed(request["messages"]) if m["role"] == "user")
        question = question.rsplit("\n", 1)[-1].strip()
        with self.lock:
            self.asked.append(question)
            self.times.append(time.monotonic())
        if question in self.fail:
            return Fault(400, {"error": {"message": "bad request", "type": "invalid_request_error"}})
        if not any(m["role"] == "tool" and str(m.get("content")).startswith("status: OK") for m in request["messages"]):
            return tool_reply("archival_memory_search", {"query": question})
        return tool_reply("send_message", {"message": f"echo: {question}", "citations": []})


def batch(questions, out, endpoint, *extra):
    return CliRunner().invoke(main, ["batch", str(questions), "-o", str(out), "--engine", "ray", "--no-progress",
                                     *extra], env={"OPENAI_BASE_URL": endpoint.base_url, "OPENAI_API_KEY": "k",
                                                   "ANALYZE_LLM": "remote"})


def test_batch_on_an_unreachable_cluster_is_one_line(tmp_path, tiny_archive):
    """A real `analyze batch` process: a Ray already up in this one would be used, whatever the address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    questions = tmp_path / "q.txt"
    questions.write_text("anything\n")
    with FakeEndpoint(Echo(set())) as endpoint:
        env = os.environ | {"PYTHONPATH": str(ROOT), "OPENAI_BASE_URL": endpoint.base_url, "OPENAI_API_KEY": "k",
                            "ANALYZE_LLM": "remote", "ANALYZE_STORE": str(tiny_archive.path)}
        proc = subprocess.run([sys.executable, "-c", "from pipeline.cli import main; main()", "batch", str(questions),
                               "-o", str(tmp_path / "out.jsonl"), "--engine", "ray", "--no-progress",
                               "--ray-address", f"127.0.0.1:{port}"], env=env, capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"Error: cannot reach the Ray cluster at 127.0.0.1:{port}: "
                                                f"Connection refused"]


def test_batch_on_ray_answers_each_question_once_at_one_version_resumes_and_retries(tmp_path, tiny_archive,
                                                                                    local_ray, monkeypatch):
    monkeypatch.setenv("ANALYZE_STORE", str(tiny_archive.path))
    questions = tmp_path / "questions.txt"
    questions.write_text("".join(f"question number {i}\n" for i in range(1, 7)))
    out = tmp_path / "out.jsonl"
    echo = Echo(fail={"question number 3"})
    with FakeEndpoint(echo) as endpoint:
        first = batch(questions, out, endpoint, "--concurrency", "2", "--rpm", "120")
        assert first.exit_code == 1, first.output  # finished, one error record
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["id"] for r in records) == [1, 2, 3, 4, 5, 6]
        assert {r["store_version"] for r in records} == {tiny_archive.version}
        for r in records:
            assert r["status"] == ("error" if r["id"] == 3 else "ok")
            if r["status"] == "ok":
                assert r["answer"] == f"echo: {r['question']}"
        # --rpm 120: one request slot per 0.5 s for both actors together (arrivals jitter around their slots)
        span = echo.times[-1] - echo.times[0]
        assert span >= 0.5 * (len(echo.times) - 1) - 0.6, echo.times  # a slot of jitter at either end

        questions.write_text(questions.read_text() + "question number 7\n")
        echo.fail, echo.asked = set(), []
        second = batch(questions, out, endpoint, "--concurrency", "2", "--retry-errors")
        assert second.exit_code == 0, second.output
        assert set(echo.asked) == {"question number 3", "question number 7"}  # a question may make several requests
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == list(range(1, 8)) and all(r["status"] == "ok" for r in records)


def test_batch_on_ray_reads_an_s3_store_whose_credentials_the_workers_lack(tmp_path, s3_bucket, embedder,
                                                                          local_ray, monkeypatch):
    """The local Ray was started without the AWS variables (and before they were set): the actors reach the
    store with the options handed to them."""
    from conftest import write_tiny_corpus
    from pipeline.config import Settings
    from pipeline.ingest.local import ingest_directory

    ingest_directory(write_tiny_corpus(tmp_path / "corpus"), Settings.from_env(store=s3_bucket), progress=False,
                     embedder=embedder)
    monkeypatch.setenv("ANALYZE_STORE", s3_bucket)
    questions = tmp_path / "questions.txt"
    questions.write_text("What is the maximum pressure of the Hydra-7 pump?\n")
    out = tmp_path / "out.jsonl"
    script = [tool_reply("archival_memory_search", {"query": "Hydra-7 pump pressure", "request_heartbeat": True}),
              tool_reply("send_message", {"message": "42 bar.", "citations": []})]
    with FakeEndpoint.scripted(script) as endpoint:
        result = batch(questions, out, endpoint, "--concurrency", "1")
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["status"] == "ok" and record["answer"] == "42 bar.", record
    assert record["steps"][0]["result"].startswith("OK: Results 1-"), record["steps"]  # the actor's search found hits
