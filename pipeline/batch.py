"""Answer a file of questions into JSONL: concurrent, rate-capped, resumable, and never losing a record.

Reading: `.txt` (one question a line, id = line number) or `.jsonl` (`id`, `question`, optional gold
`answer`/`answers`, any other fields kept under `gold` for `analyze eval`). Malformed lines are reported
with their line numbers and become `error` records; the batch goes on.

Running: N worker threads each answer one question at a time through `answer_fn(question) -> Answer`
(each call builds its own context); the main thread is the only writer and appends + flushes every
record as it completes. A rerun with the same output skips ids already there, repairs a torn last line
left by a kill, and with `retry_errors` redoes `error` records (the file is rewritten atomically without
them first, so every id appears exactly once).
"""

from __future__ import annotations

import codecs
import json
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from pipeline.faults import fault_point
from pipeline.files import atomic_write, complete_lines
from pipeline.redact import scrub
from pipeline.types import Answer

AnswerFn = Callable[[str], Answer]
RECORD_FIELDS = ("id", "question", "answer", "citations", "status", "error", "grounded", "unsupported", "mismatched",
                 "withheld", "steps", "usage", "latency_s", "model", "store_version")


class BatchInputError(ValueError):
    """The question file or the output file cannot be used as given (the message says why)."""


@dataclass(frozen=True)
class Question:
    id: int | str
    question: str
    gold: dict[str, Any] = field(default_factory=dict)  # `answers` (a list) and every extra input field


@dataclass(frozen=True)
class BadLine:
    line: int  # 1-based line number in the question file
    reason: str
    id: int | str | None = None  # the line's own id when it had a usable one

    @property
    def record_id(self) -> int | str:
        return self.id if self.id is not None else f"line:{self.line}"


def key(record_id: object) -> str:
    """Ids compare as text, so `7` and `"7"` are the same question."""
    return str(record_id)


def read_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(1-based line number, text) for each line of `path`; text is None for a line that is not UTF-8.

    A UTF-8 byte-order mark at the start is dropped; lines end at `\\n` only (a stray `\\r` is removed).
    """
    data = Path(path).read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            yield number, raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError:
            yield number, None


def read_questions(path: Path, *, field: str = "question") -> tuple[list[Question], list[BadLine]]:
    """Parse a `.txt` or `.jsonl` question file into questions and malformed lines (with line numbers).

    The one reader of question files (`analyze batch`) and query files (`analyze search --queries`, where
    `field` is "query"): `.txt` has one a line, the id being the line number; `.jsonl` has one object a line
    with `id` and `field`. A line that is not UTF-8 is a malformed line ("not UTF-8").
    """
    path = Path(path)
    if path.suffix not in (".txt", ".jsonl"):
        raise BatchInputError(f"{path}: unsupported question file type {path.suffix!r} (use .txt or .jsonl)")
    try:
        lines = list(read_lines(path))
    except FileNotFoundError:
        raise BatchInputError(f"{path}: no such file") from None
    except OSError as exc:
        raise BatchInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    questions: list[Question] = []
    bad: list[BadLine] = []
    seen: dict[str, int] = {}
    for number, line in lines:
        if line is None:
            bad.append(BadLine(number, "not UTF-8"))
            continue
        if not line.strip():
            continue
        parsed = _parse_txt(number, line) if path.suffix == ".txt" else _parse_jsonl(number, line, field)
        if isinstance(parsed, BadLine):
            bad.append(parsed)
        elif key(parsed.id) in seen:
            bad.append(BadLine(number, f"duplicate id {parsed.id!r} (first on line {seen[key(parsed.id)]})"))
        else:
            seen[key(parsed.id)] = number
            questions.append(parsed)
    return questions, bad


def _parse_txt(number: int, line: str) -> Question:
    return Question(id=number, question=line.strip())


def _parse_jsonl(number: int, line: str, field: str = "question") -> Question | BadLine:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return BadLine(number, f"invalid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(obj, dict):
        return BadLine(number, f"expected a JSON object, got {type(obj).__name__}")
    qid = obj.get("id")
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or key(qid).strip() == "":
        return BadLine(number, "missing or invalid 'id' (a string or an integer)")
    text = obj.get(field)
    if not isinstance(text, str) or not text.strip():
        return BadLine(number, f"missing or empty {field!r}", id=qid)
    gold = {k: v for k, v in obj.items() if k not in ("id", field, "answer", "answers")}
    answers = obj.get("answers", obj.get("answer"))
    if answers is not None:
        answers = answers if isinstance(answers, list) else [answers]
        if not all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in answers):
            return BadLine(number, "'answer'/'answers' must be a string or a list of strings", id=qid)
        gold["answers"] = [str(a) for a in answers]
    return Question(id=qid, question=text.strip(), gold=gold)


# ---------------------------------------------------------------- output file: load, repair, rewrite

def summary_path(out: Path) -> Path:
    """`outputs/demo.jsonl` -> `outputs/demo.summary.json`."""
    return out.with_suffix(".summary.json")


def load_output(out: Path, *, echo: Callable[[str], None] = lambda s: None, repair: bool = True) -> list[dict[str, Any]]:
    """Read the records already in `out`, truncating a torn last line (from a kill mid-write) in place.

    With `repair=False` the file is left as it is and a torn last line is just ignored.
    """
    if not out.exists():
        return []
    data, torn = complete_lines(out, repair=repair)
    if torn and repair:
        echo(f"Repaired {out}: dropped a torn last line ({torn} bytes); that question will be redone.")
    records = []
    for number, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            raise BatchInputError(f"{out}:{number}: not a JSON record; fix or move the file, then rerun") from None
        if not isinstance(record, dict) or "id" not in record:
            raise BatchInputError(f"{out}:{number}: not a batch record (no 'id'); is this the right output file?")
        records.append(record)
    return records


def rewrite_output(out: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace `out` with `records` atomically and durably (see `atomic_write`)."""
    atomic_write(out, (json.dumps(record, ensure_ascii=False) + "\n" for record in records))


class RecordWriter:
    """Appends one JSON line per record and flushes it at once; one lock, so lines never interleave."""

    def __init__(self, out: Path) -> None:
        self._fh = out.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            fault_point("batch.write")
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


# ---------------------------------------------------------------- records

def make_record(question: Question, answer: Answer, latency_s: float, meta: dict[str, Any]) -> dict[str, Any]:
    """One output line: the answer's fields, timing, run metadata (model, store_version) and the gold fields."""
    d = answer.to_dict()
    record = {"id": question.id, "question": question.question, "answer": d["answer"],
              "citations": d["citations"], "status": d["status"], "error": d["error"], "grounded": d["grounded"],
              "unsupported": d["unsupported"], "mismatched": d["mismatched"], "withheld": d["withheld"],
              "steps": d["steps"],
              "usage": d["usage"], "latency_s": round(latency_s, 3), **meta}
    if question.gold:
        record["gold"] = question.gold
    return record


def bad_line_record(bad: BadLine, meta: dict[str, Any]) -> dict[str, Any]:
    answer = Answer(question="", answer="", status="error", error=f"input line {bad.line}: {bad.reason}")
    return make_record(Question(id=bad.record_id, question=""), answer, 0.0, meta)


def answer_one(question: Question, answer_fn: AnswerFn, meta: dict[str, Any]) -> dict[str, Any]:
    """Answer one question; an exception (which `answer_fn` should never raise) becomes an error record."""
    started = time.perf_counter()
    try:
        answer = answer_fn(question.question)
    except Exception as exc:  # isolation: one broken question must not end the batch
        answer = Answer(question=question.question, answer="", status="error",
                        error=scrub(f"{type(exc).__name__}: {exc}"))
    return make_record(question, answer, time.perf_counter() - started, meta)


# ---------------------------------------------------------------- rate cap

class RateLimiter:
    """Caps calls to `rpm` per minute by spacing them evenly (at most one every 60/rpm s); thread-safe.

    Wrap it around each request to the endpoint (not each question: a question makes several requests).
    """

    def __init__(self, rpm: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rpm <= 0:
            raise ValueError("rpm must be positive")
        self.interval = 60.0 / rpm
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def acquire(self) -> float:
        """Block until this call's slot; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
        return wait


class RateLimitedClient:
    """A `ChatClient` that takes a `RateLimiter` slot before every request (retries inside the client excluded)."""

    def __init__(self, client: Any, limiter: RateLimiter) -> None:
        self.client = client
        self.limiter = limiter

    def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        self.limiter.acquire()
        return self.client.complete(messages, **kwargs)


# ---------------------------------------------------------------- the run

@dataclass
class BatchResult:
    out: Path
    summary: dict[str, Any]
    interrupted: bool  # Ctrl-C stopped the run before every question was answered
    answered: int  # records written by this run


def run_batch(questions: list[Question], out: Path, answer_fn: AnswerFn, *, concurrency: int = 1,
              retry_errors: bool = False, bad_lines: Iterable[BadLine] = (), meta: dict[str, Any] | None = None,
              progress: bool = True, echo: Callable[[str], None] | None = None) -> BatchResult:
    """Answer every question not already in `out` (and, with `retry_errors`, those recorded as errors).

    Ctrl-C once: no new questions start; those in flight finish and are written. Twice: in-flight
    questions are abandoned (they are not written, so a rerun redoes them). Either way the caller should
    tell the user to rerun the same command to resume. Writes `summary_path(out)` at the end.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    say = echo or _tqdm_echo
    meta = dict(meta or {})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    bad_lines = list(bad_lines)
    existing = load_output(out, echo=say)
    wanted = {key(q.id) for q in questions} | {key(b.record_id) for b in bad_lines}
    kept = _plan_kept(existing, wanted, retry_errors)
    if len(kept) != len(existing):
        rewrite_output(out, kept)
        say(f"Dropped {len(existing) - len(kept)} old record(s) from {out} to redo them.")
    done = {key(r["id"]) for r in kept}
    todo = [q for q in questions if key(q.id) not in done]
    writer = RecordWriter(out)
    started = time.perf_counter()
    answered = 0
    try:
        for bad in bad_lines:
            if key(bad.record_id) not in done:
                writer.write(bad_line_record(bad, meta))
                answered += 1
        if len(todo) < len(questions):
            say(f"Resuming {out}: {len(questions) - len(todo)} of {len(questions)} questions already answered.")
        written, interrupted = _run_pool(todo, answer_fn, writer, concurrency, meta, progress, say)
        answered += written
    finally:
        writer.close()
    summary = summarize(load_output(out), questions=len(questions), bad_lines=len(bad_lines), wanted=wanted)
    summary["this_run"] = {"answered": answered, "seconds": round(time.perf_counter() - started, 3),
                           "concurrency": concurrency, "interrupted": interrupted}
    summary_path(out).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return BatchResult(out=out, summary=summary, interrupted=interrupted, answered=answered)


def _plan_kept(existing: list[dict[str, Any]], wanted: set[str], retry_errors: bool) -> list[dict[str, Any]]:
    """Records to keep: one per id (an ok one when there are several), minus errors to redo."""
    best: dict[str, dict[str, Any]] = {}
    for record in existing:
        k = key(record["id"])
        if k not in best or (best[k].get("status") != "ok" and record.get("status") == "ok"):
            best[k] = record
    if retry_errors:
        best = {k: r for k, r in best.items() if not (k in wanted and r.get("status") != "ok")}
    kept_ids = set(best)
    kept = []
    for record in existing:  # keep the file's order
        k = key(record["id"])
        if k in kept_ids and best[k] is record:
            kept.append(record)
    return kept


def _run_pool(todo: list[Question], answer_fn: AnswerFn, writer: RecordWriter, concurrency: int,
              meta: dict[str, Any], progress: bool, say: Callable[[str], None]) -> tuple[int, bool]:
    """Daemon worker threads answer; this (main) thread writes. Returns (records written, interrupted)."""
    from pipeline.progress import progress_bar

    tasks: queue.SimpleQueue[Question] = queue.SimpleQueue()
    for q in todo:
        tasks.put(q)
    results: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                q = tasks.get_nowait()
            except queue.Empty:
                return
            results.put(answer_one(q, answer_fn, meta))

    threads = [threading.Thread(target=work, daemon=True, name=f"batch-{i}") for i in range(min(concurrency, len(todo)))]
    bar = progress_bar("batch", len(todo), "q", enabled=progress, dynamic_ncols=True)
    counts = {"ok": 0, "failed": 0}
    interrupts = 0

    def start_and_drain() -> None:
        for t in threads:
            if not stop.is_set() and t.ident is None:
                t.start()
        while True:
            try:
                record = results.get(timeout=0.1)
            except queue.Empty:
                if not any(t.is_alive() for t in threads) and results.empty():
                    return
                continue
            writer.write(record)
            counts["ok" if record["status"] == "ok" else "failed"] += 1
            bar.update(1)
            bar.set_postfix(counts, refresh=False)

    while True:
        try:
            start_and_drain()
            break
        except KeyboardInterrupt:
            interrupts += 1
            stop.set()
            in_flight = sum(t.is_alive() for t in threads)
            if interrupts > 1 or in_flight == 0:
                if in_flight:
                    say(f"Abandoned {in_flight} in-flight question(s); they were not written.")
                break
            say(f"Interrupted: finishing {in_flight} in-flight question(s) (Ctrl-C again to abandon them).")
    bar.close()
    written = counts["ok"] + counts["failed"]
    return written, interrupts > 0 and written < len(todo)


def _tqdm_echo(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


# ---------------------------------------------------------------- summary

def percentile(values: list[float], p: float) -> float | None:
    """Linear-interpolated percentile (p in 0..100); None for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * p / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(records: list[dict[str, Any]], *, questions: int, bad_lines: int = 0,
              wanted: set[str] | None = None) -> dict[str, Any]:
    """Totals over an output file: ok/errors, tokens, latency p50/p95, steps, models and store versions.

    `wanted` (record ids the question file asks for) gives `remaining`, the ids with no record yet.
    """
    ok = [r for r in records if r.get("status") == "ok"]
    latencies = [float(r["latency_s"]) for r in records if r.get("question") and r.get("latency_s") is not None]
    prompt = sum(int((r.get("usage") or {}).get("prompt_tokens", 0)) for r in records)
    completion = sum(int((r.get("usage") or {}).get("completion_tokens", 0)) for r in records)
    errors: dict[str, int] = {}
    for r in records:
        if r.get("status") != "ok":
            reason = re.sub(r"\d+", "N", str(r.get("error") or "unknown").split(":")[0][:60])
            errors[reason] = errors.get(reason, 0) + 1

    def rounded(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {
        "questions": questions, "bad_lines": bad_lines, "records": len(records), "ok": len(ok),
        "errors": len(records) - len(ok), "error_kinds": errors,
        "remaining": len((wanted or set()) - {key(r["id"]) for r in records}),
        "tokens": {"prompt": prompt, "completion": completion, "total": prompt + completion},
        "latency_s": {"p50": rounded(percentile(latencies, 50)), "p95": rounded(percentile(latencies, 95)),
                      "mean": rounded(sum(latencies) / len(latencies)) if latencies else None},
        "steps_mean": round(sum(len(r.get("steps") or []) for r in records) / len(records), 2) if records else None,
        "grounded": sum(r.get("grounded") is True for r in ok), "ungrounded": sum(r.get("grounded") is False for r in ok),
        "withheld": sum(r.get("withheld") is not None for r in ok),
        "models": sorted({str(r["model"]) for r in records if r.get("model") is not None}),
        "store_versions": sorted({r["store_version"] for r in records if r.get("store_version") is not None}),
    }


def format_summary(summary: dict[str, Any], out: Path) -> str:
    """A few human lines for the end of a run."""
    lat, tok = summary["latency_s"], summary["tokens"]
    p50 = "-" if lat["p50"] is None else f"{lat['p50']:.2f}s"
    p95 = "-" if lat["p95"] is None else f"{lat['p95']:.2f}s"
    lines = [f"{out}: {summary['ok']} ok, {summary['errors']} errors, {summary['remaining']} remaining "
             f"({summary['records']} records for {summary['questions']} questions)",
             f"tokens {tok['prompt']} prompt + {tok['completion']} completion; latency p50 {p50}, p95 {p95}"]
    if summary["ungrounded"]:
        withheld = f", {summary['withheld']} withheld by --strict" if summary["withheld"] else ""
        lines.append(f"grounding: {summary['ungrounded']} of {summary['grounded'] + summary['ungrounded']} answers "
                     f"have claims found in no retrieved chunk{withheld}")
    if summary["error_kinds"]:
        lines.append("errors: " + ", ".join(f"{k} x{n}" for k, n in sorted(summary["error_kinds"].items())))
    lines.append(f"summary: {summary_path(out)}")
    return "\n".join(lines)

