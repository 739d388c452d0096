"""`python -m pipeline.demo [OUT.jsonl] [--log LLAMA.log]`: the last step of `make demo`.

Prints each answer of a batch output with its citations and its verdict against the gold answer,
then, when the local LLM's log is given, what the prompt cache saved in this run.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("outputs/demo.jsonl")


def _verdict(record: dict[str, Any]) -> str:
    from pipeline.evaluate import score_record

    score = score_record(record)
    if score.error:
        return f"ERROR: {record.get('error')}"
    if not score.graded:
        return "not graded"
    gold = record.get("gold") or {}
    expected = "(unanswerable: should decline)" if score.unanswerable else (gold.get("answers") or ["?"])[0]
    return f"{'correct' if score.correct else 'WRONG'} (gold: {expected})"


def _where(citation: dict[str, Any]) -> str:
    page = citation.get("page")
    return f"{citation.get('source')}" + (f", page {page}" if page is not None else "")


def format_record(record: dict[str, Any]) -> str:
    """One question: the answer wrapped, its numbered sources, the verdict, steps and seconds."""
    lines = [f"[{record.get('id')}] {record.get('question')}"]
    body = (record.get("answer") or "").strip() or "(no answer)"
    lines += textwrap.wrap(body, 100, initial_indent="    ", subsequent_indent="    ")
    for number, citation in enumerate(record.get("citations") or [], start=1):
        lines.append(f"    [{number}] {_where(citation)}")
    steps, latency = len(record.get("steps") or []), record.get("latency_s")
    timing = f", {latency:.0f}s" if isinstance(latency, (int, float)) else ""
    lines.append(f"    -> {_verdict(record)}; {steps} steps{timing}")
    return "\n".join(lines)


def cache_summary(log_text: str) -> str:
    """This run's llama.cpp requests: seconds, and prompt tokens evaluated vs. served from the prompt cache."""
    from pipeline.local_llm import request_timings

    timings = request_timings(log_text)
    if not timings:
        return "llama.cpp: no requests in this run"
    evaluated = sum(t.prompt_tokens for t in timings)
    cached = sum(t.cached_tokens for t in timings)
    seconds = sum(t.total_s for t in timings)
    return (f"llama.cpp: {len(timings)} requests, {seconds / len(timings):.1f}s each on average; prompt tokens: "
            f"{cached + evaluated:,} sent, {evaluated:,} evaluated, {cached / (cached + evaluated):.0%} from the "
            f"prompt cache ({evaluated / len(timings):.0f} evaluated per request)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help="batch output (default outputs/demo.jsonl)")
    parser.add_argument("--log", type=Path, default=None, help="the local LLM server's log (ANALYZE_LLM_LOG)")
    args = parser.parse_args(argv)
    from pipeline.batch import BatchInputError, load_output

    try:
        if not args.out.is_file():
            raise FileNotFoundError("no such file")
        records = load_output(args.out, repair=False)
    except (OSError, BatchInputError) as exc:
        print(f"error: cannot read {args.out}: {exc}", file=sys.stderr)
        return 1
    for record in records:
        print(format_record(record), end="\n\n")
    if args.log and args.log.is_file():
        print(cache_summary(args.log.read_text(errors="replace")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
