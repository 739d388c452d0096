"""What each part of the fixed context costs at 2048, 3000, 4096 and 8192 tokens, and the room left for the queue.

For each tool mode (json with llama.cpp's grammar format, native tools, json with OpenAI's json_schema format):
the instructions (with the function list in json mode), the function schemas or response format as counted,
full working memory, the summary reserve, the reply reserve, the queue's room, the room one function result
gets, and how many demo-manual chunks (about 1,300 characters, the corpus's longest) a search page then holds.
No model runs: these are the agent's own token estimates, the ones every request is checked against.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from pipeline.config import Settings

WINDOWS = (2048, 3000, 4096, 8192)
MODES = (("json", "json_object"), ("tools", "json_schema"), ("json", "json_schema"))
TOP_K = 5


def run(out_dir: Path) -> dict[str, Any]:
    from pipeline.agent.functions import HEAD_TOKENS, hit_entry
    from pipeline.agent.context import ContextTooSmall
    from pipeline.agent.loop import context_budget, new_context, request_shape
    from pipeline.agent.recall import Recall
    from pipeline.agent.paging import per_page_for
    from pipeline.agent.tokens import TokenCounter
    from pipeline.democorpus import MANUAL, filler_paragraph
    from pipeline.testing import make_hit

    text = filler_paragraph(random.Random(0), 12)[:1300]
    hit = make_hit("4f1c2a9e0b7d3c5e8a61", text, source=MANUAL, page=12)
    hit_tokens = TokenCounter().text("\n".join(hit_entry(10, hit)))
    rows = []
    for tool_mode, response_format in MODES:
        for window in WINDOWS:
            settings = Settings(context_window=window, tool_mode=tool_mode, response_format=response_format)
            parts = context_budget(settings)
            fixed = window - parts["queue"]
            try:
                result_room = new_context(settings, Recall()).result_room(*request_shape(settings))
            except ContextTooSmall:  # this mode does not run at this window
                result_room = 0
            rows.append({"tool_mode": tool_mode, "response_format": response_format if tool_mode == "json" else None,
                         "window": window, **parts, "fixed": fixed, "fixed_share": round(fixed / window, 3),
                         "result_room": result_room,
                         "hits_per_page": per_page_for(result_room - HEAD_TOKENS, [hit_tokens], preferred=TOP_K)
                         if result_room else 0})
    return {"hit_tokens": hit_tokens, "top_k": TOP_K, "rows": rows}
