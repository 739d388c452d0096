"""The MemGPT nested key-value retrieval task, and the retriever-reader baseline it is compared with.

Archival memory holds `pairs` random UUID key-value pairs, one per document. A question at nesting
level L names a key whose value is itself a key, L times over: the model must follow the chain
k0 -> k1 -> ... -> kL and answer with the value of kL, which is not a key. Generation is seeded and
deterministic; chains are disjoint and the remaining pairs are distractors (Packer et al. 2023, sec. 3.2).

`run` builds a fresh archive in a temporary directory, answers every question with the agent (or, with
`baseline`, with one retrieval and one LLM call: as many top hits as fit the window, stuffed into one
prompt), and scores it with `pipeline.evaluate` (accuracy by level, steps per question).
"""

from __future__ import annotations

import random
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pipeline.batch import Question, load_output, run_batch, summary_path
from pipeline.config import Settings
from pipeline.evaluate import evaluate, write_report
from pipeline.llm import ChatClient, LLMError
from pipeline.agent.tokens import TokenCounter
from pipeline.types import Answer, Citation, Step

if TYPE_CHECKING:
    from pipeline.agent.functions import Retriever

LEVELS = (0, 1, 2, 3, 4)
PAIRS = 140
PER_LEVEL = 5
REPLY_RESERVE = 512  # tokens kept free for the baseline's answer
BASELINE_TOP_K = 10  # hits per search page while filling the baseline's prompt


@dataclass(frozen=True)
class KVTask:
    pairs: list[tuple[str, str]]  # (key, value) in archive order
    questions: list[Question]  # gold: answers [final value], category "level L", level, chain of keys

    @property
    def lookup(self) -> dict[str, str]:
        return dict(self.pairs)


def question_text(key: str) -> str:
    return (f"Archival memory holds key-value pairs of UUIDs. Find the value of the key {key}. If that value is "
            "itself a key in archival memory, look up its value in turn, and repeat until you reach a value that is "
            "not a key. Answer with that final value only.")


def generate(*, pairs: int = PAIRS, levels: tuple[int, ...] = LEVELS, per_level: int = PER_LEVEL,
             seed: int = 0) -> KVTask:
    """`pairs` UUID pairs holding `per_level` disjoint chains for each nesting level; same seed, same task."""
    needed = per_level * sum(level + 1 for level in levels)
    if any(level < 0 for level in levels) or per_level < 1:
        raise ValueError("levels must be >= 0 and per_level >= 1")
    if needed > pairs:
        raise ValueError(f"{per_level} questions per level for levels {list(levels)} need {needed} pairs; "
                         f"only {pairs} requested")
    rng = random.Random(seed)

    def fresh() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    keys = [fresh() for _ in range(pairs)]
    values: dict[str, str] = {}
    questions: list[Question] = []
    taken = 0
    for level in levels:
        for n in range(per_level):
            chain = keys[taken: taken + level + 1]
            taken += level + 1
            for here, there in zip(chain, chain[1:]):
                values[here] = there
            final = values[chain[-1]] = fresh()
            questions.append(Question(id=f"L{level}-{n}", question=question_text(chain[0]),
                                      gold={"answers": [final], "category": f"level {level}", "level": level,
                                            "chain": chain}))
    for key in keys[taken:]:
        values[key] = fresh()
    order = keys[:]
    rng.shuffle(order)
    return KVTask(pairs=[(k, values[k]) for k in order], questions=questions)


def pair_text(key: str, value: str) -> str:
    """One pair as stored: a plain sentence (a `value: ...` line alone would be parsed as a title)."""
    return f"The value of key {key} is {value}.\n"


def write_documents(task: KVTask, root: Path) -> None:
    """One small text file per pair under `root`, so every pair is one chunk of archival memory."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (key, value) in enumerate(task.pairs):
        (root / f"pair-{i:03d}.txt").write_text(pair_text(key, value), encoding="utf-8")


def build_archive(task: KVTask, settings: Settings, workdir: Path, *, progress: bool = True, embedder=None) -> Any:
    """Ingest the task's pairs into a fresh archive under `workdir`; returns it opened for reading."""
    from pipeline.ingest.local import ingest_directory
    from pipeline.archive.search import Fusion
    from pipeline.archive.store import Archive

    docs, store = workdir / "pairs", workdir / "archive"
    write_documents(task, docs)
    report = ingest_directory(docs, settings.with_(store=store), progress=progress, embedder=embedder)
    if report.failed:
        raise RuntimeError(f"nested-kv archive: {report.failed} pair files failed to ingest: {report.failures[:3]}")
    return Archive.open(store, embedder=embedder, fusion=Fusion.from_settings(settings))


_BASELINE_SYSTEM = ("Answer the question using only the numbered passages below. Copy values exactly. Cite the "
                    "passages you used as [n]. If the passages do not contain the answer, say that the documents do "
                    "not answer the question.")


def baseline_answer(question: str, *, retriever: Retriever, client: ChatClient, settings: Settings) -> Answer:
    """Retriever-reader: the top hits for `question` that fit the window, in one prompt, one LLM call."""
    counter = TokenCounter()

    def messages(passages: list[str]) -> list[dict[str, Any]]:
        return [{"role": "system", "content": _BASELINE_SYSTEM},
                {"role": "user", "content": "Passages:\n" + "\n".join(passages) + f"\n\nQuestion: {question}"}]

    room = settings.context_window - REPLY_RESERVE - counter.request(messages([]))
    hits, blocks, page, full = [], [], 0, False
    while not full:
        try:
            result = retriever.search(question, mode="hybrid", top_k=BASELINE_TOP_K, page=page)
        except Exception as exc:  # a broken retriever is this question's error, not the batch's
            return Answer(question, "", status="error", error=f"search failed: {exc}")
        for hit in result.hits:
            block = f"[{len(blocks) + 1}] ({hit.source}, page {hit.page}) {hit.text.strip()}"
            cost = counter.text(block) + 1
            if cost > room:
                full = True
                break
            room -= cost
            hits.append(hit)
            blocks.append(block)
        page += 1
        full = full or not result.hits or page >= result.pages
    try:
        reply = client.complete(messages(blocks), max_tokens=REPLY_RESERVE)
    except LLMError as exc:
        return Answer(question, "", status="error", error=str(exc))
    text = (reply.content or "").strip()
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", text)}
    citations = [Citation.of(h) for i, h in enumerate(hits, start=1) if i in cited]
    usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
    step = Step("retrieve_and_read", {"query": question, "passages": len(blocks)},
                f"{len(blocks)} passages in one prompt", reply.prompt_tokens, reply.completion_tokens)
    if not text:
        return Answer(question, "", citations, [step], usage, status="error", error="empty reply")
    return Answer(question, text, citations, [step], usage)


def run(settings: Settings, *, baseline: bool = False, levels: tuple[int, ...] = LEVELS, pairs: int = PAIRS,
        per_level: int = PER_LEVEL, seed: int = 0, out: Path | None = None, concurrency: int = 4,
        progress: bool = True, client: ChatClient | None = None, retriever: Retriever | None = None) -> dict[str, Any]:
    """Generate, answer and score the task; writes OUT (fresh each run), its summary, `.eval.md` and `.eval.png`.

    `client` defaults to the configured endpoint (`LLMError` when there is none); `retriever` to a fresh
    archive of the task's pairs built in a temporary directory.
    """
    from pipeline.llm import make_client

    task = generate(pairs=pairs, levels=levels, per_level=per_level, seed=seed)
    method = "baseline" if baseline else "agent"
    out = Path(out or Path("outputs") / f"nested-kv{'-baseline' if baseline else ''}.jsonl")
    client = client or make_client(settings)
    with tempfile.TemporaryDirectory(prefix="nested-kv-") as tmp:
        reader = retriever or build_archive(task, settings, Path(tmp), progress=progress)
        answer_fn = _answer_fn(baseline, reader, client, settings)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)  # the task is regenerated each run: never mix in another run's records
        result = run_batch(task.questions, out, answer_fn, concurrency=concurrency, progress=progress,
                           meta={"model": settings.model, "store_version": getattr(reader, "version", None),
                                 "method": method})
    report = evaluate(load_output(out))
    write_report(report, out, title=f"Nested key-value retrieval ({method}, {settings.model})")
    return {"method": method, "model": settings.model, "tool_mode": settings.tool_mode, "pairs": pairs,
            "per_level": per_level, "seed": seed, "out": str(out), "summary": str(summary_path(out)),
            "interrupted": result.interrupted,
            "levels": {name: {k: agg[k] for k in ("n", "accuracy", "steps_mean", "errors")}
                       for name, agg in report["categories"].items()},
            "overall": {k: report["overall"][k] for k in ("n", "accuracy", "steps_mean", "errors")}}


def _answer_fn(baseline: bool, retriever: Retriever, client: ChatClient, settings: Settings) -> Callable[[str], Answer]:
    if baseline:
        return lambda q: baseline_answer(q, retriever=retriever, client=client, settings=settings)
    from pipeline.agent.loop import answer

    return lambda q: answer(q, retriever=retriever, client=client, settings=settings)


def format_levels(result: dict[str, Any]) -> str:
    """Accuracy and steps per level, one line each."""
    lines = [f"nested KV ({result['method']}, {result['model']}, {result['pairs']} pairs, seed {result['seed']})"]
    for name, row in list(result["levels"].items()) + [("overall", result["overall"])]:
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.2f}"
        steps = "-" if row["steps_mean"] is None else f"{row['steps_mean']:.1f}"
        lines.append(f"  {name:<8} accuracy {acc}  steps/question {steps}  n={row['n']}  errors={row['errors']}")
    return "\n".join(lines)
