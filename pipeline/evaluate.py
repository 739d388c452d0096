"""Scoring batch output against gold answers, and the eval report (table, markdown, PNG chart).

Metrics, per record:
- `exact_match`: the normalized prediction equals a normalized gold answer.
- `best_subspan_em` (Liu et al., "Lost in the Middle", followed by MemGPT's document QA): a gold answer
  counts when its normalized form occurs inside the normalized prediction.
- abstention: on questions marked `unanswerable`, the answer is correct when it declines to answer
  (detected from phrases such as "not mentioned" or "could not find").
- citation page recall: the share of gold `pages` that the answer's citations name.
A record is *correct* when it is ok and either matches a gold answer (subspan) or, if unanswerable,
abstains. Error records count as wrong; records with no gold are not graded.

Grounding (from the records' `grounded` flag, set by the agent's check): the grounded share of answers,
accuracy of grounded and of ungrounded answers, the grounded share of correct answers, and abstention
precision (declined answers that were on unanswerable questions) and recall (unanswerable questions declined).
"""

from __future__ import annotations

import re
import string
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pipeline.agent.grounding import is_abstention

__all__ = ["aggregate", "best_subspan_em", "evaluate", "exact_match", "format_table", "is_abstention",
           "normalize_answer", "page_recall", "score_record", "write_report"]

NO_CATEGORY = "(none)"
_PUNCT = set(string.punctuation + "‘’´`")
def normalize_answer(text: str) -> str:
    """Lower-case; punctuation and underscores to spaces; drop articles; collapse whitespace (Lost in the Middle)."""
    text = text.replace("_", " ").lower()
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _golds(answers: Iterable[str]) -> list[str]:
    return [g for g in (normalize_answer(a) for a in answers) if g]


def exact_match(prediction: str, answers: Iterable[str]) -> bool:
    """The normalized prediction equals one of the normalized gold answers."""
    pred = normalize_answer(prediction)
    return any(pred == g for g in _golds(answers))


def best_subspan_em(prediction: str, answers: Iterable[str]) -> bool:
    """Some normalized gold answer is a substring of the normalized prediction (empty golds never match)."""
    pred = normalize_answer(prediction)
    return any(g in pred for g in _golds(answers))


def page_recall(citations: list[dict[str, Any]], gold_pages: list[Any]) -> float | None:
    """Share of gold pages cited. A gold page is an int (any source) or {"source", "page"}; None when no gold."""
    if not gold_pages:
        return None
    cited = [(str(c.get("source") or ""), c.get("page")) for c in citations or []]

    def found(gold: Any) -> bool:
        if isinstance(gold, dict):
            src = str(gold.get("source") or "")
            return any(page == gold.get("page") and (s == src or s.endswith("/" + src) or src.endswith("/" + s))
                       for s, page in cited)
        return any(page == gold for _, page in cited)

    return sum(found(g) for g in gold_pages) / len(gold_pages)


@dataclass(frozen=True)
class RecordScore:
    id: Any
    category: str
    graded: bool  # has gold answers or is marked unanswerable
    unanswerable: bool
    error: bool
    exact: bool
    subspan: bool
    abstained: bool
    correct: bool
    page_recall: float | None
    steps: int
    grounded: bool | None  # None: the record has no grounding verdict (an error, or an older record)


def score_record(record: dict[str, Any]) -> RecordScore:
    """Score one batch record against its `gold` (answers, unanswerable, pages, category)."""
    gold = record.get("gold") or {}
    answers = [str(a) for a in gold.get("answers") or []]
    unanswerable = bool(gold.get("unanswerable"))
    ok = record.get("status") == "ok"
    prediction = str(record.get("answer") or "") if ok else ""
    exact = ok and exact_match(prediction, answers)
    subspan = ok and best_subspan_em(prediction, answers)
    abstained = ok and is_abstention(prediction)
    return RecordScore(
        id=record.get("id"), category=str(gold.get("category") or NO_CATEGORY),
        graded=unanswerable or bool(answers), unanswerable=unanswerable, error=not ok, exact=exact,
        subspan=subspan, abstained=abstained, correct=abstained if unanswerable else subspan,
        page_recall=page_recall(record.get("citations") or [], gold.get("pages") or []),
        steps=len(record.get("steps") or []), grounded=record.get("grounded") if ok else None)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def aggregate(scores: list[RecordScore]) -> dict[str, Any]:
    """Rates over a group of records (None where the group has nothing to measure)."""
    graded = [s for s in scores if s.graded]
    answerable = [s for s in graded if not s.unanswerable]
    unanswerable = [s for s in graded if s.unanswerable]
    recalls = [s.page_recall for s in scores if s.page_recall is not None]
    judged = [s for s in graded if s.grounded is not None]
    return {
        "n": len(scores), "graded": len(graded), "errors": sum(s.error for s in scores),
        "accuracy": _mean([float(s.correct) for s in graded]),
        "exact_match": _mean([float(s.exact) for s in answerable]),
        "best_subspan_em": _mean([float(s.subspan) for s in answerable]),
        "abstention": _mean([float(s.abstained) for s in unanswerable]),
        "false_abstention": _mean([float(s.abstained) for s in answerable]),
        "page_recall": _mean(recalls),
        "steps_mean": _mean([float(s.steps) for s in scores]),
        "grounded": _mean([float(bool(s.grounded)) for s in scores if s.grounded is not None]),
        "accuracy_grounded": _mean([float(s.correct) for s in judged if s.grounded]),
        "accuracy_ungrounded": _mean([float(s.correct) for s in judged if not s.grounded]),
        "grounded_correct": _mean([float(bool(s.grounded)) for s in judged if s.correct and not s.unanswerable]),
        "abstention_precision": _mean([float(s.unanswerable) for s in graded if s.abstained]),
        "abstention_recall": _mean([float(s.abstained) for s in unanswerable]),
    }


def evaluate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Overall and per-category aggregates for batch records (categories sorted by name)."""
    scores = [score_record(r) for r in records]
    categories = sorted({s.category for s in scores})
    return {"overall": aggregate(scores),
            "categories": {c: aggregate([s for s in scores if s.category == c]) for c in categories}}


COLUMNS = [("n", "n"), ("accuracy", "accuracy"), ("exact_match", "EM"), ("best_subspan_em", "subspan EM"),
           ("abstention", "abstention"), ("abstention_precision", "abst. precision"), ("page_recall", "page recall"),
           ("grounded", "grounded"), ("accuracy_grounded", "acc. grounded"),
           ("accuracy_ungrounded", "acc. ungrounded"), ("steps_mean", "steps"), ("errors", "errors")]
GROUNDING_BARS = [("grounded", "grounded\nshare"), ("accuracy_grounded", "accuracy\ngrounded"),
                  ("accuracy_ungrounded", "accuracy\nungrounded"), ("grounded_correct", "grounded share\nof correct"),
                  ("abstention_precision", "abstention\nprecision"), ("abstention_recall", "abstention\nrecall")]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _rows(report: dict[str, Any]) -> list[list[str]]:
    groups = list(report["categories"].items()) if len(report["categories"]) > 1 else []
    return [[name] + [_cell(agg[k]) for k, _ in COLUMNS] for name, agg in groups + [("overall", report["overall"])]]


def format_table(report: dict[str, Any]) -> str:
    """A fixed-width text table: one row per category, then overall."""
    header = ["category"] + [title for _, title in COLUMNS]
    rows = [header] + _rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report_paths(out: Path) -> tuple[Path, Path]:
    """`outputs/demo.jsonl` -> (`outputs/demo.eval.md`, `outputs/demo.eval.png`)."""
    return out.with_suffix(".eval.md"), out.with_suffix(".eval.png")


def write_report(report: dict[str, Any], out: Path, *, title: str | None = None) -> tuple[Path, Path]:
    """Write the markdown report and the accuracy-by-category PNG next to `out`; returns their paths."""
    md_path, png_path = report_paths(out)
    _write_chart(report, png_path, title or out.name)
    header = ["category"] + [title for _, title in COLUMNS]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(row) + " |" for row in _rows(report)]
    md = [f"# Evaluation of `{out.name}`" if title is None else f"# {title}", "",
          f"{report['overall']['n']} records, {report['overall']['graded']} with gold answers, "
          f"{report['overall']['errors']} errors.", "", *table, "",
          "- accuracy: graded records answered correctly (best_subspan_em on answerable questions, "
          "abstention on unanswerable ones); error records count as wrong.",
          "- EM: normalized exact match; subspan EM: a normalized gold answer occurs in the normalized answer "
          "(Liu et al., \"Lost in the Middle\").",
          "- abstention: unanswerable questions where the answer declined (its recall); abst. precision: declined "
          "answers that were on unanswerable questions; page recall: gold pages cited.",
          "- grounded: answers whose every number, date, version, identifier, quotation and name was found in a "
          "chunk retrieved for it; acc. grounded / acc. ungrounded: accuracy of each group "
          f"(grounded share of correct answers: {_cell(report['overall']['grounded_correct'])}).",
          "- steps: mean agent function calls per question.", "",
          f"![accuracy by category and grounding]({png_path.name})", ""]
    md_path.write_text("\n".join(md), encoding="utf-8")
    return md_path, png_path


def _write_chart(report: dict[str, Any], path: Path, title: str) -> None:
    """Accuracy by category (left) and the grounding figures over all records (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(report["categories"].items()) + [("overall", report["overall"])]
    names = [name for name, _ in groups]
    fig, (ax, ground) = plt.subplots(1, 2, figsize=(max(4.0, 1.1 * len(names) + 1.5) + 5.5, 3.8),
                                     gridspec_kw={"width_ratios": [max(3, len(names)), len(GROUNDING_BARS)]})
    bars = ax.bar(names, [agg["accuracy"] or 0.0 for _, agg in groups],
                  color=["#4c72b0"] * (len(names) - 1) + ["#55a868"])
    for bar, (_, agg) in zip(bars, groups):
        _label(ax, bar, "-" if agg["accuracy"] is None else f"{agg['accuracy']:.2f}\nn={agg['graded']}")
    ax.set_ylabel("accuracy")
    ax.set_title(textwrap.fill(f"Accuracy by category: {title}", 50), fontsize=9)
    ax.tick_params(axis="x", labelrotation=30 if len(names) > 5 else 0, labelsize=8)
    overall = report["overall"]
    values = [overall[key] for key, _ in GROUNDING_BARS]
    bars = ground.bar([label for _, label in GROUNDING_BARS], [v or 0.0 for v in values], color="#dd8452")
    for bar, value in zip(bars, values):
        _label(ground, bar, "-" if value is None else f"{value:.2f}")
    ground.set_title("Grounding (all records)", fontsize=9)
    ground.tick_params(axis="x", labelsize=7)
    for axis in (ax, ground):
        axis.set_ylim(0, 1.15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(ax: Any, bar: Any, text: str) -> None:
    ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                fontsize=8, xytext=(0, 2), textcoords="offset points")
