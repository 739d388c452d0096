"""Grounding: the check alone over the demo store (no model), and the views of a local-model run.

`run` (no model; it runs without llama-cpp-python too) is the check alone over the demo store, with the chunks a
first search for the question retrieves (hybrid, 10 hits) as evidence. Every gold answer variant of the
answerable questions, as written in `queries/demo.jsonl` (`4000 hours`, `March 12, 2029`, `three`), should be
grounded when its chunk was retrieved (a false alarm otherwise); one invented answer per unanswerable question
(INVENTED, written to resemble what the local model says) should not be.

`summarize` scores the records of one local-model batch over the demo questions (11 answerable, 9 about facts
no document holds), run with or without --strict: the check and its one more look are the same either way, and
--strict only replaces the final ungrounded answer (kept under `withheld`). So one run gives three views:

- `today`: the first answer of each question, before any one more look (the grounding-check step records
  it): what the agent without the check delivers for the same prompts (the model samples, so this is the
  same distribution, not a replay);
- `checked`: the final answers, withheld ones scored by their own text (the check without --strict);
- `strict`: the answers --strict delivers (an ungrounded answer is an abstention).

For each: answerable accuracy (best_subspan_em), abstention on the unanswerable questions, and the grounded
share of correct answers; plus how many true first answers were held back (false alarms). The local-model run
is `pipeline.bench.demo_windows` (its records per window are summarized here);
`python -m pipeline.bench.grounding OUT.jsonl ...` summarizes existing batch outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Settings

INVENTED = {
    "q12": "The Hydra-7 retails for $35.00.", "q13": "The Hydra-7 weighs 85 kg.",
    "q14": "Its maximum flow rate is 120 cubic metres per hour.", "q15": "Revenue in 2026 was 151.3 million euros.",
    "q16": "Error code E-204 means that the motor is overheating.", "q17": "The motor is rated at 7.5 kW.",
    "q18": "The warranty lasts 24 months.", "q19": "Call the Stavanger service centre on +47 51 84 22 00.",
    "q20": "The Hydra-5 bearings use Norrlube HT-220.",  # a near miss: every claim is in the manual
}


def mechanical(archive: Any) -> dict[str, Any]:
    """The check alone on gold and invented answers, against what a first search retrieves (no model)."""
    from pipeline.agent.grounding import check
    from pipeline.democorpus import FACTS

    true, invented = [], []
    for fact in FACTS:
        hits = archive.search(fact.question, mode="hybrid", top_k=10).hits
        if fact.unanswerable:
            verdict = check(INVENTED[fact.id], hits, question=fact.question)
            invented.append({"id": fact.id, "answer": INVENTED[fact.id], "caught": not verdict.grounded,
                             "unsupported": verdict.unsupported})
            continue
        retrieved = any(" ".join(fact.sentence.split()[:6]) in " ".join(h.text.split()) for h in hits)
        for variant in fact.answers:
            verdict = check(f"The answer is {variant}.", hits, question=fact.question)
            true.append({"id": fact.id, "answer": variant, "fact_retrieved": retrieved, "grounded": verdict.grounded,
                         "unsupported": verdict.unsupported})
    seen = [t for t in true if t["fact_retrieved"]]
    return {"true_answers": len(true), "true_with_fact_retrieved": len(seen),
            "false_alarms": [t for t in seen if not t["grounded"]],
            "grounded_share_when_retrieved": round(sum(t["grounded"] for t in seen) / max(1, len(seen)), 3),
            "grounded_share_all": round(sum(t["grounded"] for t in true) / max(1, len(true)), 3),
            "invented_caught": sum(i["caught"] for i in invented), "invented": len(invented),
            "invented_detail": invented}


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


def _strict_answer(record: dict[str, Any]) -> str:
    """What --strict delivers: the recorded answer of a strict run, else an abstention for an ungrounded one."""
    from pipeline.agent.grounding import strict_abstention

    if record.get("withheld") or record.get("grounded") is not False:
        return str(record.get("answer") or "")
    return strict_abstention(record.get("unsupported") or [])


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The three views of one run, with or without --strict (see the module docstring), from its records."""
    from pipeline.evaluate import best_subspan_em

    held = [r for r in records if any(s.get("function") == "(grounding check)" for s in r.get("steps") or [])]
    false_alarms = [r["id"] for r in held if not r["gold"].get("unanswerable")
                    and best_subspan_em(_first_answer(r), r["gold"]["answers"])]
    return {
        "today": _score(records, _first_answer, lambda r: r not in held and r.get("grounded")),
        "checked": _score(records, lambda r: r.get("withheld") or r.get("answer") or "", lambda r: r.get("grounded")),
        "strict": _score(records, _strict_answer, lambda r: r.get("grounded")),
        "held_back": [r["id"] for r in held], "false_alarms": false_alarms,
        "errors": [r["id"] for r in records if r["status"] != "ok"],
        "steps_mean": round(sum(len(r.get("steps") or []) for r in records) / max(1, len(records)), 2),
        "answers": {r["id"]: {"first": _first_answer(r)[:200], "final": (r.get("withheld") or r.get("answer") or "")[:200],
                              "grounded": r.get("grounded"), "unsupported": r.get("unsupported")} for r in records},
    }


def run(out_dir: Path) -> dict[str, Any]:
    from pipeline.archive.store import Archive
    from pipeline.democorpus import write_corpus
    from pipeline.ingest.local import ingest_directory

    corpus, store = out_dir / "grounding-corpus", out_dir / "grounding-archive"
    write_corpus(corpus, out_dir / "grounding-queries.jsonl")
    report = ingest_directory(corpus, Settings.from_env(store=store), progress=False)
    if report.failed:
        raise RuntimeError(f"demo corpus ingest failed: {report.failures}")
    return {"mechanical": mechanical(Archive.open(store)),
            "local_model": "see demo_windows.json: each window's `grounding` (python -m pipeline.bench demo_windows)"}


def main(argv: list[str]) -> int:
    import json

    from pipeline.batch import load_output

    for path in argv:
        print(json.dumps({"file": path, **summarize(load_output(Path(path), repair=False))}, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
