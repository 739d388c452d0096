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
`DEMO_WINDOWS` (comma-separated, default 8192,4096).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.batch import load_output

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


def run(out_dir: Path) -> dict[str, Any]:
    from pipeline.gguf import resolve_model
    from pipeline.local_llm import llama_server_available

    if not llama_server_available():
        return {"skipped": "llama-cpp-python[server] is not installed (pip install '.[local]')"}
    model, info = resolve_model(os.environ.get("ANALYZE_LOCAL_MODEL"))
    work = out_dir / "demo_windows"
    questions, store = _demo(work)
    from pipeline.bench.grounding import summarize
    from pipeline.democorpus import FACTS

    result: dict[str, Any] = {"model": info.describe(), "questions": f"the demo's {len(FACTS)} (queries/demo.jsonl)",
                              "windows": {}}
    windows = [int(w) for w in os.environ.get("DEMO_WINDOWS", "").split(",") if w.strip()] or WINDOWS
    for window in windows:
        out = work / f"demo-{window}.jsonl"
        out.unlink(missing_ok=True)
        started = time.perf_counter()
        argv = [sys.executable, "-c", "from pipeline.cli import main; main()", "batch", str(questions), "-o", str(out),
                "--store", str(store), "--llm", "local", "--local-model", str(model), "--tool-mode", "json",
                "--concurrency", "1", "--context-window", str(window), "--no-progress"]
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if done.returncode not in (0, 1):
            raise RuntimeError(f"analyze batch at {window} failed ({done.returncode}): {done.stderr[-2000:]}")
        records = load_output(out, repair=False)
        result["windows"][str(window)] = {**step_report(records), "wall_s": round(time.perf_counter() - started, 1),
                                          "grounding": summarize(records)}
    return result


def main(argv: list[str]) -> int:
    for path in argv:
        print(json.dumps({"file": path, **step_report(load_output(Path(path), repair=False))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
