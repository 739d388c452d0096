"""The MemGPT nested key-value task against the configured endpoint: the agent beside the retriever-reader baseline.

Uses OPENAI_BASE_URL / OPENAI_API_KEY / ANALYZE_MODEL (a local model is not started here); with no endpoint
configured it returns {"skipped": ...}. Records and reports land in `out_dir` as nested-kv[-baseline].*.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Settings


def run(out_dir: Path) -> dict[str, Any]:
    from pipeline import nestedkv

    settings = Settings.from_env()
    if not (settings.base_url or settings.api_key):
        return {"skipped": "no endpoint configured"}
    results = {}
    for baseline in (False, True):
        name = "nested-kv-baseline" if baseline else "nested-kv"
        results["baseline" if baseline else "agent"] = nestedkv.run(settings, baseline=baseline,
                                                                   out=out_dir / f"{name}.jsonl", progress=False)
    return {"model": settings.model, "tool_mode": settings.tool_mode, "context_window": settings.context_window,
            "pairs": nestedkv.PAIRS, "per_level": nestedkv.PER_LEVEL,
            "accuracy_by_level": {method: {level: row["accuracy"] for level, row in r["levels"].items()}
                                  for method, r in results.items()},
            "steps_per_question_by_level": {level: row["steps_mean"] for level, row in results["agent"]["levels"].items()},
            "runs": results}
