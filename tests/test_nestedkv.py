"""Nested key-value task: generation (levels, determinism, chains), the baseline, and scored runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.nestedkv import baseline_answer, build_archive, generate, pair_text, run, write_documents
from pipeline.testing import ScriptedChatClient, text_reply, tool_reply
from pipeline.types import Hit, SearchResult

PAIR = re.compile(r"key ([0-9a-f-]{36}) is ([0-9a-f-]{36})")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
SETTINGS = Settings(base_url="http://127.0.0.1:9/v1", model="scripted", context_window=8192)


class KVRetriever:
    """Archival memory of the task's pairs: hits are the pairs containing a UUID of the query."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs
        self.version = 1

    def search(self, query: str, *, mode: str = "hybrid", top_k: int = 5, page: int = 0) -> SearchResult:
        wanted = set(UUID.findall(query))
        found = [Hit(f"kv-{i}", f"pair-{i:03d}.txt", None, None, "", pair_text(k, v), 1.0)
                 for i, (k, v) in enumerate(self.pairs) if wanted & {k, v}]
        return SearchResult(query, found[page * top_k:(page + 1) * top_k], len(found), page, top_k)


def test_generation_has_the_levels_and_pairs_asked_for() -> None:
    task = generate(pairs=140, levels=(0, 1, 2, 3, 4), per_level=5, seed=1)
    assert len(task.pairs) == 140 and len({k for k, _ in task.pairs}) == 140
    assert all(UUID.fullmatch(k) and UUID.fullmatch(v) for k, v in task.pairs)
    levels = [q.gold["level"] for q in task.questions]
    assert levels == [lvl for lvl in range(5) for _ in range(5)]
    assert {q.gold["category"] for q in task.questions} == {f"level {i}" for i in range(5)}
    assert len({q.id for q in task.questions}) == 25


def test_every_chain_resolves_to_its_gold_answer_through_exactly_level_hops() -> None:
    task = generate(seed=7)
    lookup = task.lookup
    for q in task.questions:
        key, hops = q.gold["chain"][0], 0
        assert key in q.question
        value = lookup[key]
        while value in lookup:
            key, value, hops = value, lookup[value], hops + 1
        assert hops == q.gold["level"] and [value] == q.gold["answers"]
    starts = [q.gold["chain"] for q in task.questions]
    assert len({k for chain in starts for k in chain}) == sum(len(c) for c in starts)  # chains are disjoint


def test_generation_is_deterministic_per_seed() -> None:
    assert generate(seed=3) == generate(seed=3)
    assert generate(seed=3).pairs != generate(seed=4).pairs


def test_too_many_questions_for_the_pairs_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="need 150 pairs"):
        generate(pairs=140, per_level=10)


def test_documents_hold_one_pair_each(tmp_path: Path) -> None:
    task = generate(pairs=20, levels=(0, 1), per_level=2)
    write_documents(task, tmp_path)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 20
    assert PAIR.findall(files[0].read_text()) == [task.pairs[0]]


def test_baseline_stuffs_hits_into_one_prompt_and_cites_them() -> None:
    task = generate(pairs=20, levels=(0,), per_level=1)
    q = task.questions[0]
    client = ScriptedChatClient([text_reply(f"The value is {q.gold['answers'][0]} [1].", prompt_tokens=90,
                                            completion_tokens=9)])
    answer = baseline_answer(q.question, retriever=KVRetriever(task.pairs), client=client, settings=SETTINGS)
    assert answer.status == "ok" and q.gold["answers"][0] in answer.answer
    assert len(client.requests) == 1 and q.gold["chain"][0] in client.requests[0]["messages"][1]["content"]
    assert [c.chunk_id for c in answer.citations] == [f"kv-{[k for k, _ in task.pairs].index(q.gold['chain'][0])}"]
    assert len(answer.steps) == 1 and answer.usage == {"prompt_tokens": 90, "completion_tokens": 9}


def test_baseline_stops_filling_at_the_window() -> None:
    task = generate(pairs=140, levels=(0,), per_level=1)

    class Everything(KVRetriever):
        def search(self, query: str, **kw: Any) -> SearchResult:
            return super().search(" ".join(k for k, _ in self.pairs), **kw)

    client = ScriptedChatClient([text_reply("?")])
    answer = baseline_answer(task.questions[0].question, retriever=Everything(task.pairs), client=client,
                             settings=Settings(base_url="x", context_window=1024))
    passages = answer.steps[0].arguments["passages"]
    assert 0 < passages < 140


def perfect_reader(request: dict[str, Any]) -> Any:
    """Follows the chain through whatever passages the prompt holds; answers with the last value it reaches."""
    prompt = request["messages"][-1]["content"]
    lookup = dict(PAIR.findall(prompt))
    key = UUID.search(prompt.split("Question:")[1]).group()
    value = lookup.get(key, "not found")
    while value in lookup:
        value = lookup[value]
    return text_reply(f"{value} [1]")


def test_baseline_run_scores_accuracy_per_level(tmp_path: Path) -> None:
    task = generate(pairs=40, levels=(0, 1, 2), per_level=2)
    out = tmp_path / "kv-base.jsonl"
    client = ScriptedChatClient([perfect_reader] * len(task.questions))
    result = run(SETTINGS, baseline=True, levels=(0, 1, 2), pairs=40, per_level=2, out=out, concurrency=2,
                 progress=False, client=client, retriever=KVRetriever(task.pairs))
    # one retrieval on the question's key finds only the first hop: right at level 0, wrong deeper
    assert {k: v["accuracy"] for k, v in result["levels"].items()} == {"level 0": 1.0, "level 1": 0.0, "level 2": 0.0}
    assert result["overall"]["steps_mean"] == 1.0 and result["method"] == "baseline"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and all(r["method"] == "baseline" for r in records)
    assert (tmp_path / "kv-base.eval.md").exists() and (tmp_path / "kv-base.eval.png").exists()


def agent_policy(task):
    """A scripted agent that searches each key of the chain, then answers with the value it read last."""
    def reply(request: dict[str, Any]) -> Any:
        messages = request["messages"]
        question = next(m["content"] for m in messages if m["role"] == "user" and "Find the value" in str(m["content"]))
        key = UUID.search(question).group()
        results = [str(m["content"]) for m in messages if m["role"] == "tool"]
        for text in results:  # follow what the searches returned so far
            found = dict(PAIR.findall(text))
            if key in found:
                key = found[key]
        if results and key not in task.lookup:
            return tool_reply("send_message", {"message": key, "citations": []})
        return tool_reply("archival_memory_search", {"query": key, "request_heartbeat": True})

    return reply


def test_agent_run_follows_chains_and_counts_steps(tmp_path: Path) -> None:
    task = generate(pairs=30, levels=(0, 2), per_level=2)
    out = tmp_path / "kv.jsonl"
    client = ScriptedChatClient([agent_policy(task)] * 40)
    result = run(SETTINGS, levels=(0, 2), pairs=30, per_level=2, out=out, concurrency=1, progress=False,
                 client=client, retriever=KVRetriever(task.pairs))
    assert result["levels"]["level 0"]["accuracy"] == 1.0 and result["levels"]["level 2"]["accuracy"] == 1.0
    assert result["levels"]["level 0"]["steps_mean"] == 2.0  # one search, then send_message
    assert result["levels"]["level 2"]["steps_mean"] == 4.0


def test_cli_nested_kv_without_an_endpoint_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from pipeline.cli import main

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = CliRunner().invoke(main, ["eval", "nested-kv", "--baseline", "--llm", "remote"])
    assert result.exit_code == 2 and "nested-kv needs an LLM endpoint" in result.stderr
    assert "Traceback" not in result.output
    bad = CliRunner().invoke(main, ["eval", "nested-kv", "--levels", "a-b"])
    assert bad.exit_code == 2 and "0-4" in bad.stderr


@pytest.mark.slow
def test_baseline_over_a_real_archive_sees_every_pair(tmp_path: Path, embedder) -> None:
    task = generate(pairs=12, levels=(0, 1, 2), per_level=1)
    archive = build_archive(task, SETTINGS, tmp_path, progress=False, embedder=embedder)
    assert sorted(PAIR.findall(" ".join(h.text for h in archive.search("value of key", top_k=12).hits))) == \
        sorted(task.pairs)  # every pair is stored whole, one chunk each
    client = ScriptedChatClient([perfect_reader] * len(task.questions))
    result = run(SETTINGS, baseline=True, levels=(0, 1, 2), pairs=12, per_level=1, out=tmp_path / "kv.jsonl",
                 concurrency=2, progress=False, client=client, retriever=archive)
    # all 12 pairs fit the window, so a perfect reader follows every chain
    assert result["overall"]["accuracy"] == 1.0 and result["overall"]["errors"] == 0
    records = [json.loads(line) for line in (tmp_path / "kv.jsonl").read_text().splitlines()]
    assert all(r["steps"][0]["arguments"]["passages"] == 12 for r in records)
    assert all(isinstance(r["store_version"], int) for r in records)
