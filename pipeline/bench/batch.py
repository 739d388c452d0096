"""Batch benchmark: concurrency speed-up against a slow fake endpoint, and a fault run with a SIGKILL and resume.

Throughput: N questions, each a scripted 2-call conversation (search, then send_message) against
`FakeEndpoint` with a fixed latency per call, through the real `openai` client and the real agent, over a
static in-memory retriever (so the figure is the runner's, not the embedder's); concurrency 1 vs 8 in the
same run. Overhead per question = its latency minus the endpoint's sleeps.

Faults: 50 questions through the real `analyze batch` CLI in a subprocess, over a tiny real archive, with
the endpoint answering 429s, 500s, malformed arguments and unknown functions at random; the subprocess is
SIGKILLed mid-run, a torn last line is added to the output, and the same command resumes. Reports that
every id appears exactly once and the share that ended ok.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.batch import Question, load_output, percentile, read_questions, run_batch
from pipeline.config import Settings
from pipeline.llm import ChatReply
from pipeline.testing import FakeEndpoint, Fault, tool_reply
from pipeline.types import Hit, SearchResult

LATENCY_S = 0.5
THROUGHPUT_QUESTIONS = 16
FAULT_QUESTIONS = 50
FAULT_LATENCY_S = 0.1
KILL_AFTER = 15  # records written before the SIGKILL


class StaticRetriever:
    """A retriever that finds one chunk echoing the query: no embedder, no disk."""

    version = 0

    def search(self, query: str, *, mode: str = "hybrid", top_k: int = 5, page: int = 0) -> SearchResult:
        hits = [Hit("c-1", "notes.txt", 1, 1, "", f"A passage about: {query}", 1.0)] if page == 0 else []
        return SearchResult(query, hits, 1, page, top_k)


def the_question(request: dict[str, Any]) -> str:
    """The question of an agent request: its first user message."""
    return next(str(m["content"]) for m in request["messages"] if m["role"] == "user")


def expected_answer(question: str) -> str:
    """The scripted model's answer: names the question without asking it (a message that is itself a question
    is not delivered)."""
    return f"answer to: {question.rstrip('?')}"


def two_step(request: dict[str, Any]) -> ChatReply:
    """The scripted model: search for the question, then answer it once a search result is in the context (a
    failed call, such as an injected malformed one, is no search: an answer before one is not delivered)."""
    question = the_question(request)
    if any(m["role"] == "tool" and str(m.get("content")).startswith("status: OK") for m in request["messages"]):
        return tool_reply("send_message", {"message": expected_answer(question), "citations": []})
    return tool_reply("archival_memory_search", {"query": question, "request_heartbeat": True})


def faulty(*, seed: int = 0, rate_429: float = 0.1, rate_500: float = 0.1,
           rate_malformed: float = 0.1) -> Callable[[dict[str, Any]], ChatReply | Fault]:
    """`two_step` behind random faults: 429 (Retry-After 0), 500, malformed arguments or an unknown function."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def handler(request: dict[str, Any]) -> ChatReply | Fault:
        with lock:
            r = rng.random()
        if r < rate_429:
            return Fault.rate_limited(retry_after=0)
        if r < rate_429 + rate_500:
            return Fault.server_error()
        if r < rate_429 + rate_500 + rate_malformed / 2:
            return tool_reply("archival_memory_search", '{"query": "unterminated')
        if r < rate_429 + rate_500 + rate_malformed:
            return tool_reply("search_the_web", {"q": "x"})
        return two_step(request)

    return handler


def run(out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        return {"throughput": throughput(Path(tmp)), "faults": fault_run(Path(tmp))}


def throughput(workdir: Path) -> dict[str, Any]:
    """Questions per second at concurrency 1 and 8, and the runner's own time per question."""
    from pipeline.agent.loop import answer
    from pipeline.llm import make_client

    questions = [Question(id=i, question=f"What does section {i} say?") for i in range(THROUGHPUT_QUESTIONS)]
    result: dict[str, Any] = {"questions": len(questions), "calls_per_question": 2, "endpoint_latency_s": LATENCY_S,
                              "retriever": "static in-memory"}
    with FakeEndpoint(two_step, latency=LATENCY_S) as endpoint:
        settings = Settings(base_url=endpoint.base_url, api_key="x", model="fake-model")
        client = make_client(settings)
        retriever = StaticRetriever()
        for concurrency in (1, 8):
            out = workdir / f"throughput-{concurrency}.jsonl"
            started = time.perf_counter()
            run_batch(questions, out, lambda q: answer(q, retriever=retriever, client=client, settings=settings),
                      concurrency=concurrency, progress=False, echo=lambda m: None)
            seconds = time.perf_counter() - started
            records = load_output(out)
            right = sum(r["status"] == "ok" and r["answer"] == expected_answer(r["question"]) for r in records)
            overheads = [r["latency_s"] - 2 * LATENCY_S for r in records]
            result[f"concurrency_{concurrency}"] = {
                "seconds": round(seconds, 2), "questions_per_s": round(len(questions) / seconds, 3),
                "correct": right, "overhead_per_question_s": {"p50": round(percentile(overheads, 50) or 0, 4),
                                                              "p95": round(percentile(overheads, 95) or 0, 4)}}
    speedup = result["concurrency_8"]["questions_per_s"] / result["concurrency_1"]["questions_per_s"]
    result["speedup_8_vs_1"] = round(speedup, 2)
    result["target_met"] = speedup >= 6
    return result


def fault_run(workdir: Path) -> dict[str, Any]:
    """50 questions with injected faults via the CLI; SIGKILL mid-run, a torn line, resume; exactly-once check."""
    from pipeline.ingest.local import ingest_directory

    docs, store = workdir / "docs", workdir / "archive"
    docs.mkdir()
    for name, text in {"alpha.txt": "The alpha project started in 2019 and was led by Ada.",
                       "beta.txt": "Beta replaced alpha in 2022; its budget was 4 million.",
                       "gamma.txt": "Gamma is a research note on caching and paging."}.items():
        (docs / name).write_text(text)
    ingest_directory(docs, Settings(store=store), progress=False)
    qfile = workdir / "faults.jsonl"
    qfile.write_text("".join(json.dumps({"id": f"q{i:03d}", "question": f"What about item {i}?"}) + "\n"
                             for i in range(FAULT_QUESTIONS)))
    out = workdir / "faults-out.jsonl"
    result: dict[str, Any] = {"questions": FAULT_QUESTIONS, "retriever": "tiny real archive (3 chunks)",
                              "faults": "per request: 10% 429, 10% 500, 5% malformed arguments, 5% unknown function"}
    with FakeEndpoint(faulty(seed=1), latency=FAULT_LATENCY_S) as endpoint:
        env = {**os.environ, "OPENAI_BASE_URL": endpoint.base_url, "OPENAI_API_KEY": "x", "ANALYZE_LLM": "remote"}
        argv = [sys.executable, "-c", "from pipeline.cli import main; main()", "batch", str(qfile), "-o", str(out),
                "--store", str(store), "--concurrency", "8", "--no-progress"]
        child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while _lines(out) < KILL_AFTER and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = child.poll() is None
        if killed:
            os.kill(child.pid, signal.SIGKILL)
        child.wait()
        result["killed_after_records"] = _lines(out)
        result["kill_tore_a_line"] = out.exists() and not out.read_bytes().endswith(b"\n")
        with out.open("ab") as fh:  # what a kill in the middle of a write leaves behind
            fh.write(b'{"id": "q049", "question": "What about ite')
        resumed = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
        result["resume_exit_code"] = resumed.returncode
        result["resume_repaired_torn_line"] = "torn last line" in resumed.stderr
    records = load_output(out, repair=False)
    ids = [str(r["id"]) for r in records]
    wanted = [str(q.id) for q in read_questions(qfile)[0]]
    ok = sum(r["status"] == "ok" for r in records)
    result.update({"sigkilled": killed, "records": len(records), "every_id_exactly_once": sorted(ids) == sorted(wanted),
                   "ok": ok, "ok_share": round(ok / len(wanted), 3),
                   "correct": sum(r["status"] == "ok" and r["answer"] == expected_answer(r["question"]) for r in records),
                   "endpoint_requests": len(endpoint.requests),
                   "errors": sorted({str(r["error"])[:80] for r in records if r["status"] != "ok"})})
    if not result["every_id_exactly_once"]:
        raise AssertionError(f"ids not exactly once after resume: {len(ids)} records for {len(wanted)} questions")
    return result


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0
