"""Local LLM: seconds per agent step, and prompt tokens evaluated per step, with and without the prompt cache.

The real agent answers one demo question in json mode against llama.cpp's server, over a fixed
retriever (five manual-like hits, the answer in the first), so both runs see the same prompts.
"cache on" is how `--llm local` runs: the server keeps KV states and the agent's context grows
append-only, so a step evaluates only its new tokens. "cache off" starts the server with
`--cache false` and makes every request's prompt differ from its first token (a per-request line
at the top of the system message), so each step evaluates its whole prompt, as a server without
prefix reuse, or an agent that rewrites its context every step, would. Model: `ANALYZE_LOCAL_MODEL`
or the default; threads: `ANALYZE_LLM_THREADS` or all cores but one.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from pipeline.config import Settings
from pipeline.types import Hit, SearchResult

QUESTION_ID = "q01"
CONTEXT_WINDOW = 4096
MAX_STEPS = 3


class _FixedRetriever:
    """Five hits of manual prose for any query; the first holds the answer."""

    def __init__(self) -> None:
        from pipeline.democorpus import FACTS, MANUAL, filler_paragraph

        rng = random.Random(1)
        fact = next(f for f in FACTS if f.id == QUESTION_ID)
        texts = [f"{filler_paragraph(rng, 4)} {fact.sentence} {filler_paragraph(rng, 3)}"]
        texts += [filler_paragraph(rng, 8) for _ in range(4)]
        pages = [fact.page or 1, 33, 51, 12, 40]
        self.hits = [Hit(f"bench{i:02d}", MANUAL, page, page, "", text, 1.0 / (i + 1))
                     for i, (page, text) in enumerate(zip(pages, texts))]

    def search(self, query: str, *, mode: str = "hybrid", top_k: int = 5, page: int = 0) -> SearchResult:
        hits = self.hits[page * top_k:(page + 1) * top_k]
        return SearchResult(query=query, hits=hits, total=len(self.hits), page=page, top_k=top_k)


class _Uncached:
    """Puts a per-request line first in the system message, so no prompt shares a prefix with another."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests = 0

    def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        self.requests += 1
        first = {**messages[0], "content": f"Request {self.requests}.\n{messages[0]['content']}"}
        return self.inner.complete([first, *messages[1:]], **kwargs)


def _one_run(model: Path, *, cache: bool) -> dict[str, Any]:
    from pipeline.agent.loop import answer
    from pipeline.democorpus import FACTS
    from pipeline.llm import OpenAIChatClient
    from pipeline.local_llm import request_timings, start_local_server

    question = next(f for f in FACTS if f.id == QUESTION_ID)
    with start_local_server(model, n_ctx=CONTEXT_WINDOW, alias=model.stem, cache=cache) as server:
        settings = Settings.from_env(base_url=server.base_url, api_key="local", model=model.stem, tool_mode="json",
                                     context_window=CONTEXT_WINDOW, max_steps=MAX_STEPS, request_timeout=900.0,
                                     response_format="json_object")
        client = OpenAIChatClient(settings)
        started = time.perf_counter()
        result = answer(question.question, retriever=_FixedRetriever(),
                        client=client if cache else _Uncached(client), settings=settings)
        wall = time.perf_counter() - started
        timings = request_timings(server.log_path.read_text(errors="replace"))
    steps = [{"seconds": round(t.total_s, 2), "prompt_tokens": t.cached_tokens + t.prompt_tokens,
              "evaluated": t.prompt_tokens, "from_cache": t.cached_tokens, "generated": t.generated_tokens,
              "prompt_tok_per_s": round(t.prompt_tokens / t.prompt_s, 1) if t.prompt_s else None,
              "gen_tok_per_s": round(t.generated_tokens / t.generate_s, 1) if t.generate_s else None}
             for t in timings]
    return {"answer": result.answer, "status": result.status,
            "correct": any(a.lower() in result.answer.lower() for a in question.answers),
            "wall_s": round(wall, 1), "steps": steps,
            "seconds_per_step": round(sum(s["seconds"] for s in steps) / max(1, len(steps)), 2),
            "evaluated_per_step": round(sum(s["evaluated"] for s in steps) / max(1, len(steps)))}


def run(out_dir: Path) -> dict[str, Any]:
    from pipeline.gguf import resolve_model
    from pipeline.local_llm import default_threads, llama_server_available

    if not llama_server_available():
        return {"skipped": "llama-cpp-python[server] is not installed (pip install '.[local]')"}
    model, info = resolve_model(os.environ.get("ANALYZE_LOCAL_MODEL"))
    return {"model": info.describe(), "threads": default_threads(), "cpus": os.cpu_count(),
            "context_window": CONTEXT_WINDOW, "question": QUESTION_ID,
            "cache_on": _one_run(model, cache=True), "cache_off": _one_run(model, cache=False)}
