"""The demo's questions with the local 1.5B model at 8192 and 4096 tokens: accuracy, steps, wasted steps.

Runs the real `analyze batch ... --llm local --tool-mode json --concurrency 1 --context-window W` over the
demo corpus (generated and ingested under outputs/bench/demo_windows/ the first time; ingest skips it later)
and scores each output with `analyze eval`'s scorer, and with the grounding views of
`pipeline.bench.grounding.summarize` (first answers, checked answers, what --strict delivers). A step is one function call the model made (the
citation and grounding checks the runner records are not steps); a wasted step is one whose result was
`Failed` (a refused repeat of a search, a malformed or unknown call, an alert echoed as an answer). Repeats
are also counted: a search with the same words and page as an earlier one in the question.
`python -m pipeline.bench.demo_windows OUT.jsonl ...` scores existing outputs the same way (how the
"before" figure was taken from a run of older code). Model: `ANALYZE_LOCAL_MODEL` or the default; windows:
`DEMO_WINDOWS` (comma-separated, default 8192,4096); questions: `DEMO_QUESTIONS` (comma-separated .jsonl files,
default the demo's own) and `DEMO_IDS` (comma-separated ids or ranges, `q01-q11,h01-h10`; default all).
The local model's server starts its own session, so its own autogroup: when this bench runs with a raised share
(`echo -15 > /proc/self/autogroup`), the server's autogroup is given the same nice as soon as it starts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.batch import BatchInputError, load_output, read_questions

WINDOWS = (8192, 4096)
SEARCHES = ("archival_memory_search", "conversation_search")


def step_report(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, steps per question, and the share of steps wasted or repeated, over batch records."""
    from pipeline.evaluate import evaluate

    steps = wasted = repeated = 0
    for record in records:
        asked: set[tuple[str, str, int]] = set()
        for step in record.get("steps") or []:
            if step["function"].startswith("(") and step["function"] not in ("(plain reply)", "(malformed reply)",
                                                                             "(empty reply)"):
                continue  # checks the runner made, not calls of the model
            steps += 1
            wasted += str(step.get("result", "")).startswith("Failed")
            if step["function"] in SEARCHES:
                args = step.get("arguments") or {}
                key = (step["function"], " ".join(str(args.get("query", "")).lower().split()), args.get("page", 0))
                repeated += key in asked
                asked.add(key)
    overall = evaluate(records)["overall"]
    graded = overall["graded"] or 0
    return {"questions": len(records), "correct": round((overall["accuracy"] or 0) * graded), "graded": graded,
            "accuracy": overall["accuracy"], "errors": overall["errors"], "steps": steps,
            "steps_per_question": round(steps / max(1, len(records)), 2),
            "wasted_steps": wasted, "wasted_share": round(wasted / max(1, steps), 3),
            "repeated_searches": repeated, "repeated_share": round(repeated / max(1, steps), 3)}


def _demo(work: Path) -> tuple[Path, Path]:
    """(questions, store): the demo corpus and its questions written under `work`, ingested (once)."""
    from pipeline.config import Settings
    from pipeline.democorpus import write_corpus
    from pipeline.ingest.local import ingest_directory

    corpus, questions, store = work / "corpus", work / "demo.jsonl", work / "archive"
    write_corpus(corpus, questions)
    ingest_directory(corpus, Settings.from_env(store=store), progress=False)
    return questions, store


def wanted_ids(spec: str) -> list[str]:
    """`q01-q11,h03` -> ["q01", ..., "q11", "h03"]: a range keeps its prefix and the width of its numbers."""
    ids: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        ends = re.fullmatch(r"([^\d-]*)(\d+)-\1?(\d+)", part)
        if ends is None:
            ids.append(part)
            continue
        prefix, first, last = ends.groups()
        ids += [f"{prefix}{n:0{len(first)}d}" for n in range(int(first), int(last) + 1)]
    return ids


def select_questions(files: list[Path], ids: list[str], out: Path) -> int:
    """Write the questions of `files` (all, or those of `ids` in that order) to `out`; how many. A malformed line,
    an id in two files or an id asked for and found nowhere is a `BatchInputError`."""
    found: dict[str, dict[str, Any]] = {}
    for path in files:
        questions, bad = read_questions(path)
        if bad:
            raise BatchInputError(f"{path}: line {bad[0].line}: {bad[0].reason}")
        for q in questions:
            if str(q.id) in found:
                raise BatchInputError(f"{path}: id {q.id!r} is in two question files")
            found[str(q.id)] = {"id": q.id, "question": q.question, **q.gold}
    missing = [i for i in ids if i not in found]
    if missing:
        raise BatchInputError(f"no question with id {', '.join(missing)} in {', '.join(map(str, files))}")
    chosen = [found[i] for i in ids] if ids else list(found.values())
    out.write_text("".join(json.dumps(q) + "\n" for q in chosen))
    return len(chosen)


def _autogroup_nice(pid: int | str = "self") -> int | None:
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def share_autogroup(parent: int, done: threading.Event, *, within: float = 600.0) -> int | None:
    """Give the autogroup of `parent`'s child that runs the local model server this process's nice, once it starts
    (it calls setsid, leaving this autogroup); its pid, or None when there is nothing to raise or no server came."""
    nice = _autogroup_nice()
    deadline = time.monotonic() + within
    while nice is not None and nice < 0 and not done.is_set() and time.monotonic() < deadline:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                server = ppid == parent and b"llama_cpp" in (stat.parent / "cmdline").read_bytes()
                if server:
                    (stat.parent / "autogroup").write_text(str(nice))
                    return int(stat.parent.name)
            except (OSError, ValueError, IndexError):
                continue
        done.wait(1.0)
    return None


def run(out_dir: Path) -> dict[str, Any]:
    from pipeline.gguf import resolve_model
    from pipeline.local_llm import llama_server_available

    if not llama_server_available():
        return {"skipped": "llama-cpp-python[server] is not installed (pip install '.[local]')"}
    model, info = resolve_model(os.environ.get("ANALYZE_LOCAL_MODEL"))
    work = out_dir / "demo_windows"
    questions, store = _demo(work)
    from pipeline.bench.grounding import summarize

    files = [Path(f.strip()) for f in os.environ.get("DEMO_QUESTIONS", "").split(",") if f.strip()] or [questions]
    ids = wanted_ids(os.environ.get("DEMO_IDS", ""))
    questions = work / "questions.jsonl"
    count = select_questions(files, ids, questions)
    result: dict[str, Any] = {"model": info.describe(), "questions": {
        "files": [str(f) for f in files], "ids": os.environ.get("DEMO_IDS") or "all", "count": count}, "windows": {}}
    windows = [int(w) for w in os.environ.get("DEMO_WINDOWS", "").split(",") if w.strip()] or WINDOWS
    for window in windows:
        out = work / f"demo-{window}.jsonl"
        out.unlink(missing_ok=True)
        started = time.perf_counter()
        argv = [sys.executable, "-c", "from pipeline.cli import main; main()", "batch", str(questions), "-o", str(out),
                "--store", str(store), "--llm", "local", "--local-model", str(model), "--tool-mode", "json",
                "--concurrency", "1", "--context-window", str(window), "--no-progress"]
        batch = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        done = threading.Event()
        boosted: list[int | None] = []
        booster = threading.Thread(target=lambda: boosted.append(share_autogroup(batch.pid, done)), daemon=True)
        booster.start()
        _, stderr = batch.communicate()
        done.set()
        booster.join()
        if batch.returncode not in (0, 1):
            raise RuntimeError(f"analyze batch at {window} failed ({batch.returncode}): {stderr[-2000:]}")
        records = load_output(out, repair=False)
        result["windows"][str(window)] = {**step_report(records), "wall_s": round(time.perf_counter() - started, 1),
                                          "server_autogroup_nice": _autogroup_nice() if boosted[0] else None,
                                          "grounding": summarize(records)}
    return result


def main(argv: list[str]) -> int:
    for path in argv:
        print(json.dumps({"file": path, **step_report(load_output(Path(path), repair=False))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
