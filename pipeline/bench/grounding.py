"""Grounding with the local model: the demo questions, 11 answerable and 9 about facts no document holds.

One batch over the demo corpus (ingested into `out_dir/grounding-archive`) with the local model, json tool
mode and --strict, as `make demo` runs it. The check and its one more look are the same with or without
--strict, which only replaces the final ungrounded answer (kept under `withheld`), so the one run gives:

- `today`: the first answer of each question, before any one more look (the grounding-check step records
  it): what the agent without the check delivers for the same prompts (the model samples, so this is the
  same distribution, not a replay);
- `checked`: the final answers, withheld ones scored by their own text (the check without --strict);
- `strict`: the answers as recorded (an ungrounded answer is an abstention).

For each: answerable accuracy (best_subspan_em), abstention on the unanswerable questions, and the grounded
share of correct answers; plus how many true first answers were held back (false alarms). Records go to
`out_dir/grounding.jsonl`; `ANALYZE_LOCAL_MODEL` and `ANALYZE_LLM_THREADS` apply as for `--llm local`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.config import Settings

QUERIES = Path("queries/demo.jsonl")


def _first_answer(record: dict[str, Any]) -> str:
    held = [s for s in record.get("steps") or [] if s.get("function") == "(grounding check)"]
    if held:
        return str(held[0]["arguments"]["answer"])
    return str(record.get("withheld") or record.get("answer") or "")


def _score(records: list[dict[str, Any]], text_of: Any, grounded_of: Any) -> dict[str, Any]:
    from pipeline.evaluate import best_subspan_em, is_abstention

    answerable = [r for r in records if not r["gold"].get("unanswerable")]
    unanswerable = [r for r in records if r["gold"].get("unanswerable")]
    correct = [r for r in answerable if r["status"] == "ok" and best_subspan_em(text_of(r), r["gold"]["answers"])]
    abstained = [r for r in unanswerable if r["status"] == "ok" and is_abstention(text_of(r))]
    return {"answerable_correct": len(correct), "answerable": len(answerable),
            "abstained": len(abstained), "unanswerable": len(unanswerable),
            "abstention": round(len(abstained) / len(unanswerable), 3) if unanswerable else None,
            "grounded_share_of_correct": (round(sum(bool(grounded_of(r)) for r in correct) / len(correct), 3)
                                          if correct else None)}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The three views of one strict run (see the module docstring), from its records."""
    from pipeline.evaluate import best_subspan_em

    held = [r for r in records if any(s.get("function") == "(grounding check)" for s in r.get("steps") or [])]
    false_alarms = [r["id"] for r in held if not r["gold"].get("unanswerable")
                    and best_subspan_em(_first_answer(r), r["gold"]["answers"])]
    return {
        "today": _score(records, _first_answer, lambda r: r not in held and r.get("grounded")),
        "checked": _score(records, lambda r: r.get("withheld") or r.get("answer") or "", lambda r: r.get("grounded")),
        "strict": _score(records, lambda r: r.get("answer") or "", lambda r: r.get("grounded")),
        "held_back": [r["id"] for r in held], "false_alarms": false_alarms,
        "errors": [r["id"] for r in records if r["status"] != "ok"],
        "steps_mean": round(sum(len(r.get("steps") or []) for r in records) / max(1, len(records)), 2),
        "answers": {r["id"]: {"first": _first_answer(r)[:200], "final": (r.get("answer") or "")[:200],
                              "grounded": r.get("grounded"), "unsupported": r.get("unsupported")} for r in records},
    }


def run(out_dir: Path) -> dict[str, Any]:
    from pipeline.batch import load_output, read_questions, run_batch
    from pipeline.democorpus import write_corpus
    from pipeline.ingest.local import ingest_directory
    from pipeline.local_llm import default_threads, llama_server_available, llm_endpoint

    if not llama_server_available():
        return {"skipped": "llama-cpp-python[server] is not installed (pip install '.[local]')"}
    corpus, store, out = out_dir / "grounding-corpus", out_dir / "grounding-archive", out_dir / "grounding.jsonl"
    write_corpus(corpus, out_dir / "grounding-queries.jsonl")
    settings = Settings.from_env(store=store, strict=True, request_timeout=900.0)
    report = ingest_directory(corpus, settings, progress=False)
    if report.failed:
        raise RuntimeError(f"demo corpus ingest failed: {report.failures}")
    questions, bad = read_questions(QUERIES)
    if bad:
        raise RuntimeError(f"{QUERIES}: malformed lines {bad}")
    if os.environ.get("PAGEFAULT_BENCH_RESUME") != "1":
        out.unlink(missing_ok=True)
    from pipeline.agent.loop import answer
    from pipeline.archive.store import Archive
    from pipeline.llm import make_client

    archive = Archive.open(store)
    with llm_endpoint(settings, llm="local", local_model=os.environ.get("ANALYZE_LOCAL_MODEL"),
                      echo=lambda m: print(m, flush=True)) as local:
        client = make_client(local)
        result = run_batch(questions, out, lambda q: answer(q, retriever=archive, client=client, settings=local),
                           meta={"model": local.model, "store_version": archive.version}, progress=True)
    records = load_output(out)
    return {"model": local.model, "threads": default_threads(), "cpus": os.cpu_count(), "strict": True,
            "context_window": local.context_window, "max_steps": local.max_steps, "questions": len(questions),
            "seconds": result.summary["this_run"]["seconds"], **summarize(records)}
