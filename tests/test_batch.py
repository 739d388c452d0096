"""Batch runner: question files, resume and torn lines, retry-errors, isolation, concurrency, Ctrl-C, CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.batch import (RECORD_FIELDS, BatchInputError, Question, RateLimiter, load_output, percentile,
                            read_questions, run_batch, summary_path)
from pipeline.cli import main
from pipeline.types import Answer, Citation

META = {"model": "fake-model", "store_version": 3}


def echo_answer(question: str) -> Answer:
    return Answer(question=question, answer=f"echo: {question}", citations=[Citation("a.txt", 1, "c1")],
                  usage={"prompt_tokens": 10, "completion_tokens": 2})


class Recorder:
    """An answer_fn that records which questions it was asked and fails the ones named in `fail`."""

    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.asked: list[str] = []
        self.fail = set(fail)
        self.lock = threading.Lock()

    def __call__(self, question: str) -> Answer:
        with self.lock:
            self.asked.append(question)
        if question in self.fail:
            return Answer(question=question, answer="", status="error", error="LLMError: gave up after 6 attempts")
        return echo_answer(question)


def questions(n: int) -> list[Question]:
    return [Question(id=i, question=f"q{i}") for i in range(1, n + 1)]


def ids_in(out: Path) -> list[str]:
    return [str(json.loads(line)["id"]) for line in out.read_text().splitlines()]


def run(qs: list[Question], out: Path, fn, **kw):
    return run_batch(qs, out, fn, meta=META, progress=False, echo=lambda m: None, **kw)


# ------------------------------------------------------------------------------------- input files

def test_txt_ids_are_line_numbers_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    f = tmp_path / "q.txt"
    f.write_text("What is A?\n\n  What is B?  \n")
    qs, bad = read_questions(f)
    assert [(q.id, q.question) for q in qs] == [(1, "What is A?"), (3, "What is B?")]
    assert bad == []


def test_jsonl_gold_fields_and_malformed_lines_with_line_numbers(tmp_path: Path) -> None:
    f = tmp_path / "q.jsonl"
    f.write_text("\n".join([
        json.dumps({"id": "a", "question": "Who?", "answer": "Ada", "category": "people", "pages": [3]}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"id": "b"}),
        json.dumps({"question": "no id"}),
        json.dumps({"id": "a", "question": "again"}),
        json.dumps({"id": 7, "question": "Why?", "answers": ["x", "y"], "unanswerable": False}),
        json.dumps({"id": 8, "question": "How?", "answer": {"bad": 1}}),
    ]) + "\n")
    qs, bad = read_questions(f)
    assert [(q.id, q.gold) for q in qs] == [
        ("a", {"answers": ["Ada"], "category": "people", "pages": [3]}),
        (7, {"answers": ["x", "y"], "unanswerable": False})]
    assert [b.line for b in bad] == [2, 3, 4, 5, 6, 8]
    assert "invalid JSON" in bad[0].reason and "JSON object" in bad[1].reason
    assert "question" in bad[2].reason and bad[2].record_id == "b"
    assert "id" in bad[3].reason and bad[3].record_id == "line:5"
    assert "duplicate id 'a'" in bad[4].reason and "line 1" in bad[4].reason
    assert "answer" in bad[5].reason


@pytest.mark.parametrize("name, text, message", [
    ("q.csv", "a,b\n", "unsupported"), ("missing.txt", None, "no such file"), ("folder.txt", "dir", "cannot read")])
def test_unusable_question_files_raise_a_clear_error(tmp_path: Path, name: str, text, message: str) -> None:
    f = tmp_path / name
    if text == "dir":
        f.mkdir()
    elif text is not None:
        f.write_text(text)
    with pytest.raises(BatchInputError, match=message):
        read_questions(f)


def test_a_bom_is_accepted_and_a_line_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    f = tmp_path / "q.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": 1, "question": "Caf\u00e9?"}).encode() + b"\r\n"
                  + b'{"id": 2, "question": "caf\xe9?"}\n' + json.dumps({"id": 3, "question": "Tea?"}).encode())
    qs, bad = read_questions(f)
    assert [(q.id, q.question) for q in qs] == [(1, "Caf\u00e9?"), (3, "Tea?")]
    assert [(b.line, b.reason) for b in bad] == [(2, "not UTF-8")]
    txt = tmp_path / "q.txt"
    txt.write_bytes(b"\xef\xbb\xbfWhat is A?\n")
    assert [q.question for q in read_questions(txt)[0]] == ["What is A?"]


# ------------------------------------------------------------------------------------- records, summary

def test_records_have_every_field_and_the_summary_is_written(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "demo.jsonl"
    qs = [Question(id=1, question="q1", gold={"answers": ["x"], "category": "c"}), Question(id=2, question="q2")]
    result = run(qs, out, Recorder(fail={"q2"}))
    records = load_output(out)
    assert set(records[0]) == {*RECORD_FIELDS, "gold"}
    by_id = {r["id"]: r for r in records}
    assert by_id[1]["answer"] == "echo: q1" and by_id[1]["gold"] == {"answers": ["x"], "category": "c"}
    assert by_id[1]["model"] == "fake-model" and by_id[1]["store_version"] == 3
    assert by_id[2]["status"] == "error" and "gave up" in by_id[2]["error"]
    assert summary_path(out) == tmp_path / "sub" / "demo.summary.json"
    summary = json.loads(summary_path(out).read_text())
    assert summary == result.summary
    assert (summary["ok"], summary["errors"], summary["remaining"]) == (1, 1, 0)
    assert summary["tokens"] == {"prompt": 10, "completion": 2, "total": 12}
    assert summary["latency_s"]["p50"] is not None and summary["store_versions"] == [3]


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 95) == 95.0


def test_bad_lines_become_error_records_once(tmp_path: Path) -> None:
    f = tmp_path / "q.jsonl"
    f.write_text('{"id": 1, "question": "fine"}\n{oops\n')
    qs, bad = read_questions(f)
    out = tmp_path / "out.jsonl"
    run(qs, out, Recorder(), bad_lines=bad)
    run(qs, out, Recorder(), bad_lines=bad)
    records = load_output(out)
    assert sorted(map(str, (r["id"] for r in records))) == ["1", "line:2"]
    assert "input line 2: invalid JSON" in next(r for r in records if r["id"] == "line:2")["error"]


# ------------------------------------------------------------------------------------- resume

def test_resume_skips_answered_ids_and_repairs_a_torn_last_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    qs = questions(5)
    run(qs[:3], out, Recorder())
    whole = out.read_bytes()
    last = whole[:-1].rfind(b"\n") + 1
    out.write_bytes(whole[: last + 17])  # q3's record cut mid-line, as a SIGKILL mid-write leaves it
    recorder = Recorder()
    result = run(qs, out, recorder)
    assert sorted(recorder.asked) == ["q3", "q4", "q5"]
    assert sorted(ids_in(out)) == ["1", "2", "3", "4", "5"]
    assert all(r["status"] == "ok" for r in load_output(out))
    assert result.answered == 3 and not result.interrupted


def test_a_corrupt_line_before_the_end_is_refused_not_rewritten(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
    with pytest.raises(BatchInputError, match=r"out.jsonl:2"):
        run(questions(2), out, Recorder())
    assert out.read_text() == '{"id": 1}\nnot json\n{"id": 2}\n'


def test_retry_errors_redoes_only_errors_and_keeps_ids_exactly_once(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    qs = questions(6)
    run(qs, out, Recorder(fail={"q2", "q5"}))
    plain = Recorder()
    run(qs, out, plain)
    assert plain.asked == []  # without --retry-errors, error records stay
    retry = Recorder()
    result = run(qs, out, retry, retry_errors=True)
    assert sorted(retry.asked) == ["q2", "q5"]
    assert sorted(ids_in(out)) == ["1", "2", "3", "4", "5", "6"]
    assert result.summary["ok"] == 6 and result.summary["errors"] == 0
    assert not out.with_name(out.name + ".tmp").exists()


def test_retry_errors_leaves_records_of_other_files_alone(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    run([Question(id="other", question="q-other")], out, Recorder(fail={"q-other"}))
    run(questions(2), out, Recorder(), retry_errors=True)
    records = {str(r["id"]): r["status"] for r in load_output(out)}
    assert records == {"other": "error", "1": "ok", "2": "ok"}


def test_duplicate_records_in_out_collapse_to_one_preferring_ok(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": 1, "status": "error"}) + "\n" + json.dumps({"id": 1, "status": "ok"}) + "\n"
                   + json.dumps({"id": 1, "status": "error"}) + "\n")
    recorder = Recorder()
    run(questions(2), out, recorder)
    assert recorder.asked == ["q2"]
    assert [(str(r["id"]), r["status"]) for r in load_output(out)] == [("1", "ok"), ("2", "ok")]


# ------------------------------------------------------------------------------------- isolation, concurrency

def test_one_failing_question_does_not_stop_the_batch(tmp_path: Path) -> None:
    def fn(question: str) -> Answer:
        if question == "q3":
            raise RuntimeError("boom")
        return echo_answer(question)

    out = tmp_path / "out.jsonl"
    result = run(questions(6), out, fn, concurrency=3)
    records = {r["id"]: r for r in load_output(out)}
    assert len(records) == 6
    assert records[3]["status"] == "error" and records[3]["error"] == "RuntimeError: boom"
    assert all(records[i]["status"] == "ok" for i in (1, 2, 4, 5, 6))
    assert result.summary["errors"] == 1


def test_concurrent_questions_never_cross_talk(tmp_path: Path) -> None:
    barrier = threading.Barrier(8, timeout=30)  # the first 8 questions must all be in flight together
    started = []
    lock = threading.Lock()
    rng = random.Random(0)
    delays = {f"q{i}": rng.uniform(0, 0.02) for i in range(1, 41)}

    def fn(question: str) -> Answer:
        with lock:
            started.append(question)
            first_wave = len(started) <= 8
        if first_wave:
            barrier.wait()
        time.sleep(delays[question])
        return echo_answer(question)

    out = tmp_path / "out.jsonl"
    run(questions(40), out, fn, concurrency=8)
    records = load_output(out)
    assert len(records) == 40 and len({r["id"] for r in records}) == 40
    for r in records:
        assert r["answer"] == f"echo: {r['question']}" and r["question"] == f"q{r['id']}"


def test_rate_limiter_spaces_requests_evenly() -> None:
    now = [100.0]
    waits = []
    limiter = RateLimiter(120, clock=lambda: now[0], sleep=waits.append)  # one every 0.5 s
    for _ in range(4):
        limiter.acquire()
    assert waits == [0.5, 1.0, 1.5]
    now[0] = 110.0  # idle for a while: no burst credit is banked beyond the next slot
    assert limiter.acquire() == 0


# ------------------------------------------------------------------------------------- Ctrl-C

def interrupting(at: str, times: int):
    def fn(question: str) -> Answer:
        if question == at:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.3)
            time.sleep(0.5)
        return echo_answer(question)

    return fn


def test_ctrl_c_finishes_in_flight_questions_then_resume_completes(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = run(questions(8), out, interrupting("q3", 1), concurrency=1)
    assert result.interrupted
    assert ids_in(out) == ["1", "2", "3"]  # q3 was in flight: finished and written; nothing new started
    assert result.summary["remaining"] == 5
    run(questions(8), out, Recorder())
    assert sorted(ids_in(out), key=int) == [str(i) for i in range(1, 9)]


def test_second_ctrl_c_abandons_in_flight_questions(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = run(questions(8), out, interrupting("q3", 2), concurrency=1)
    assert result.interrupted and ids_in(out) == ["1", "2"]
    recorder = Recorder()
    run(questions(8), out, recorder)
    assert "q3" in recorder.asked and sorted(ids_in(out), key=int) == [str(i) for i in range(1, 9)]


# ------------------------------------------------------------------------------------- CLI

@pytest.fixture
def fake_agent(monkeypatch: pytest.MonkeyPatch) -> dict:
    seen: dict = {}

    def build(settings, *, rpm, store_version):
        seen.update(settings=settings, rpm=rpm, store_version=store_version)
        return Recorder(fail={"fails"}), {"model": settings.model, "store_version": store_version or 9}

    monkeypatch.setattr("pipeline.commands.batch.build_answer_fn", build)
    monkeypatch.setenv("ANALYZE_LLM", "remote")  # never start a local model here
    return seen


def test_cli_writes_default_out_and_exits_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_agent: dict) -> None:
    monkeypatch.chdir(tmp_path)
    Path("qs.txt").write_text("one\ntwo\n")
    result = CliRunner().invoke(main, ["batch", "qs.txt", "--no-progress", "--model", "m1", "--rpm", "30"])
    assert result.exit_code == 0, result.output
    assert sorted(ids_in(Path("outputs/qs.jsonl"))) == ["1", "2"]
    assert Path("outputs/qs.summary.json").exists()
    assert "2 ok, 0 errors" in result.stdout
    assert fake_agent["settings"].model == "m1" and fake_agent["rpm"] == 30


def test_cli_reports_malformed_lines_and_exits_1(tmp_path: Path, fake_agent: dict) -> None:
    f = tmp_path / "qs.jsonl"
    f.write_text('{"id": 1, "question": "ok"}\n{"id": 2}\n')
    out = tmp_path / "o.jsonl"
    result = CliRunner().invoke(main, ["batch", str(f), "-o", str(out), "--no-progress"])
    assert result.exit_code == 1
    assert f"{f}:2: missing or empty 'question'" in result.stderr
    assert sorted(ids_in(out)) == ["1", "2"]


def test_cli_names_a_line_that_is_not_utf8(tmp_path: Path, fake_agent: dict) -> None:
    f = tmp_path / "qs.txt"
    f.write_bytes(b"\xef\xbb\xbfone\ntw\xf6\n")
    result = CliRunner().invoke(main, ["batch", str(f), "-o", str(tmp_path / "o.jsonl"), "--no-progress"])
    assert result.exit_code == 1 and f"{f}:2: not UTF-8 (recorded as an error)" in result.stderr
    assert "Traceback" not in result.output


def test_cli_full_disk_is_one_line_and_the_rerun_resumes(tmp_path: Path, fake_agent: dict,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.faults as faults

    f = tmp_path / "qs.txt"
    f.write_text("".join(f"question {n}\n" for n in range(1, 7)))
    out = tmp_path / "o.jsonl"
    monkeypatch.setattr(faults, "_reached", {})
    monkeypatch.setenv(faults.ENV, "batch.write@3=enospc")  # the third record finds the disk full
    full = CliRunner().invoke(main, ["batch", str(f), "-o", str(out), "--no-progress", "-c", "1"])
    assert full.exit_code == 2, full.output
    assert full.stderr.count("\n") == 1 and "No space left on device" in full.stderr
    assert f"resume with the same command: analyze batch {f} -o {out}" in full.stderr
    assert len(ids_in(out)) == 2  # what was written stays; nothing half-written
    monkeypatch.delenv(faults.ENV)
    again = CliRunner().invoke(main, ["batch", str(f), "-o", str(out), "--no-progress", "-c", "1"])
    assert again.exit_code == 0, again.output
    assert sorted(ids_in(out), key=int) == [str(n) for n in range(1, 7)]


def test_cli_resume_pins_the_recorded_store_version(tmp_path: Path, fake_agent: dict) -> None:
    f = tmp_path / "qs.txt"
    f.write_text("a\nb\n")
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps({"id": 1, "question": "a", "status": "ok", "store_version": 4}) + "\n")
    result = CliRunner().invoke(main, ["batch", str(f), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0 and fake_agent["store_version"] == 4
    assert [r["store_version"] for r in load_output(out)] == [4, 4]


@pytest.mark.parametrize("name, text, message", [
    ("qs.csv", "x", "unsupported"), ("empty.txt", "\n\n", "no questions")])
def test_cli_bad_input_is_a_message_and_exit_2(tmp_path: Path, fake_agent: dict, name: str, text: str,
                                                message: str) -> None:
    f = tmp_path / name
    f.write_text(text)
    result = CliRunner().invoke(main, ["batch", str(f), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_cli_without_endpoint_exits_2_with_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    f = tmp_path / "qs.txt"
    f.write_text("a\n")
    result = CliRunner().invoke(main, ["batch", str(f), "-o", str(tmp_path / "o.jsonl"), "--llm", "remote"])
    assert result.exit_code == 2 and "no LLM endpoint configured" in result.stderr


def test_cli_finished_batch_needs_no_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    f = tmp_path / "qs.txt"
    f.write_text("a\n")
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps({"id": 1, "question": "a", "answer": "x", "status": "ok"}) + "\n")
    for llm in ("remote", "local"):  # neither an endpoint nor a local server is started for nothing
        result = CliRunner().invoke(main, ["batch", str(f), "-o", str(out), "--no-progress", "--llm", llm])
        assert result.exit_code == 0, result.output
    assert ids_in(out) == ["1"]


# ------------------------------------------------------------------------------------- end to end over HTTP

def test_batch_through_the_real_openai_client_and_agent_against_a_fake_endpoint(tmp_path: Path) -> None:
    from pipeline.agent.loop import answer
    from pipeline.bench.batch import StaticRetriever, expected_answer, faulty
    from pipeline.config import Settings
    from pipeline.llm import make_client
    from pipeline.testing import FakeEndpoint

    qs = [Question(id=i, question=f"What does part {i} say?") for i in range(8)]
    out = tmp_path / "e2e.jsonl"
    with FakeEndpoint(faulty(seed=3, rate_429=0.2, rate_500=0.0, rate_malformed=0.2)) as endpoint:
        settings = Settings(base_url=endpoint.base_url, api_key="x", model="fake-model")
        client = make_client(settings)
        retriever = StaticRetriever()
        result = run(qs, out, lambda q: answer(q, retriever=retriever, client=client, settings=settings),
                     concurrency=4)
    records = load_output(out)
    assert result.summary["ok"] == 8 and len(records) == 8
    assert all(r["answer"] == expected_answer(r["question"]) for r in records)  # no cross-talk over HTTP either
    assert all(r["usage"]["prompt_tokens"] >= 0 and r["steps"] for r in records)
    assert len(endpoint.requests) > 16  # the injected 429s and malformed calls cost extra requests


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("queries/*.*")), ids=lambda p: p.name)
def test_shipped_question_files_are_valid(path: Path) -> None:
    qs, bad = read_questions(path)
    assert qs and bad == []


def test_cli_ctrl_c_exits_130_and_says_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALYZE_LLM", "remote")
    monkeypatch.setattr("pipeline.commands.batch.build_answer_fn",
                        lambda settings, **kw: (interrupting("q2", 1), {"model": "m", "store_version": 1}))
    f = tmp_path / "qs.txt"
    f.write_text("".join(f"q{i}\n" for i in range(1, 7)))
    out = tmp_path / "o.jsonl"
    result = CliRunner().invoke(main, ["batch", str(f), "-o", str(out), "--no-progress", "-c", "1"])
    assert result.exit_code == 130
    assert f"Resume with the same command: analyze batch {f} -o {out}" in result.stderr
    assert ids_in(out) == ["1", "2"]
