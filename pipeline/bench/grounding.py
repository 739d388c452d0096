"""Grounding: the check alone over the demo store (no model), and the views of a local-model run.

`run` (no model; it runs without llama-cpp-python too) is the check alone over the demo store, with the chunks a
first search for the question retrieves (hybrid, 10 hits) as evidence. Every gold answer variant of the
answerable questions, as written in `queries/demo.jsonl` (`4000 hours`, `March 12, 2029`, `three`), should be
grounded when its chunk was retrieved (a false alarm otherwise); one invented answer per unanswerable question
(INVENTED, written to resemble what the local model says) should not be, nor the answers built from a value the
retrieved text holds about another question (OFF_QUESTION: the pressure given as the weight or the motor power).

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
`python -m pipeline.bench.grounding OUT.jsonl ...` summarizes existing batch outputs, and with `--store DIR` (the
store the run used) first judges their final answers again with the current check (`recheck`): the chunks each
run showed the model are found again from its recorded searches, so a better check is measured without a new run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.config import Settings

INVENTED = {
    "q12": "The Hydra-7 retails for $35.00.", "q13": "The Hydra-7 weighs 85 kg.",
    "q14": "Its maximum flow rate is 120 cubic metres per hour.", "q15": "Revenue in 2026 was 151.3 million euros.",
    "q16": "Error code E-204 means that the motor is overheating.", "q17": "The motor is rated at 7.5 kW.",
    "q18": "The warranty lasts 24 months.", "q19": "Call the Stavanger service centre on +47 51 84 22 00.",
    "q20": "The Hydra-5 bearings use Norrlube HT-220.",  # a near miss: every claim is in the manual, about the Hydra-7
}
# Answers whose every claim is in the retrieved text but that answer another question (what the local model said)
OFF_QUESTION = {"q13": "The Hydra-7 pump weighs 42 bar.", "q17": "The rated motor power is 42 bar at up to 80 degrees.",
                "q20": INVENTED["q20"]}
PAGE_SHOWN = re.compile(r"Results (\d+)-(\d+) of")
SYSTEM_SEARCH = re.compile(r"""the system ran archival_memory_search\((['"])(.*?)\1\)""")  # an answer before any search


def mechanical(archive: Any) -> dict[str, Any]:
    """The check alone on gold and invented answers, against what a first search retrieves (no model)."""
    from pipeline.agent.grounding import check
    from pipeline.democorpus import FACTS

    true, invented = [], []
    for fact in FACTS:
        hits = archive.search(fact.question, mode="hybrid", top_k=10).hits
        if fact.unanswerable:
            for text in dict.fromkeys([INVENTED[fact.id], OFF_QUESTION.get(fact.id, INVENTED[fact.id])]):
                verdict = check(text, hits, question=fact.question)
                invented.append({"id": fact.id, "answer": text, "caught": not verdict.grounded,
                                 "unsupported": verdict.unsupported, "mismatched": verdict.reasons})
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
    return strict_abstention(record.get("unsupported") or [], record.get("mismatched") or {})


def shown_chunks(record: dict[str, Any], archive: Any) -> list[Any]:
    """The chunks a recorded run showed the model, found again in `archive` (the store the run used): the page of
    each search that succeeded (the model's, or the one the system ran for an answer before any search), by its
    query and the `Results A-B` its result names, as the agent ranks them."""
    from pipeline.agent.functions import RANKED

    shown: dict[str, Any] = {}
    for step in record.get("steps") or []:
        result = str(step.get("result") or "")
        query = (step.get("arguments") or {}).get("query") if step.get("function") == "archival_memory_search" \
            else (ran.group(2) if (ran := SYSTEM_SEARCH.search(result)) else None)
        page = PAGE_SHOWN.search(result) if query else None
        if page:
            first, last = int(page.group(1)), int(page.group(2))
            hits = archive.search(query, mode="hybrid", top_k=max(RANKED, last), page=0).hits
            shown.update((hit.chunk_id, hit) for hit in hits[first - 1:last])
    return list(shown.values())


def recheck(records: list[dict[str, Any]], archive: Any) -> list[dict[str, Any]]:
    """The records with the final answers judged again by the current check against the chunks each run showed
    (`shown_chunks`); an answer --strict replaced is put back, so `summarize` derives the --strict view again."""
    from pipeline.agent.grounding import check

    judged = []
    for record in records:
        if record.get("status") != "ok":
            judged.append(record)
            continue
        text = str(record.get("withheld") or record.get("answer") or "")
        cited = [c["chunk_id"] for c in record.get("citations") or [] if not c.get("inferred")]
        verdict = check(text, shown_chunks(record, archive), question=record.get("question", ""), cited=cited)
        judged.append({**record, "answer": text, "withheld": None, "grounded": verdict.grounded,
                       "unsupported": verdict.unsupported, "mismatched": verdict.reasons})
    return judged


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
        "correct_but_ungrounded": [r["id"] for r in records if r["status"] == "ok" and r.get("grounded") is False
                                   and not r["gold"].get("unanswerable") and best_subspan_em(
                                       r.get("withheld") or r.get("answer") or "", r["gold"]["answers"])],
        "errors": [r["id"] for r in records if r["status"] != "ok"],
        "steps_mean": round(sum(len(r.get("steps") or []) for r in records) / max(1, len(records)), 2),
        "answers": {r["id"]: {"first": _first_answer(r)[:200], "final": (r.get("withheld") or r.get("answer") or "")[:200],
                              "grounded": r.get("grounded"), "unsupported": r.get("unsupported"),
                              "mismatched": r.get("mismatched") or {}} for r in records},
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
    import argparse
    import json

    from pipeline.batch import load_output

    parser = argparse.ArgumentParser(prog="python -m pipeline.bench.grounding", description=__doc__.split("\n")[0])
    parser.add_argument("outputs", nargs="+", type=Path, help="batch OUT.jsonl files")
    parser.add_argument("--store", type=Path, help="the store the runs used: judge their answers again (recheck)")
    args = parser.parse_args(argv)
    archive = None
    if args.store:
        from pipeline.archive.store import Archive

        archive = Archive.open(args.store)
    for path in args.outputs:
        records = load_output(path, repair=False)
        report = {"file": str(path), **summarize(records)}
        if archive is not None:
            report = {"file": str(path), "recorded": summarize(records),
                      "rechecked": summarize(recheck(records, archive))}
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
