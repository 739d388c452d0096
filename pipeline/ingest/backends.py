"""Embedding backends: torch (sentence-transformers) or onnxruntime on an ONNX copy of the same model.

`onnx` runs the fp32 export; `onnx-int8` a dynamically quantized one whose configuration fits this CPU's integer
dot products (AVX-512 VNNI, else AVX2, else no quantization at all), detected once and said once.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

BACKENDS = ("torch", "onnx", "onnx-int8")


@cache
def cpu_features() -> frozenset[str]:
    """The CPU flags (from /proc/cpuinfo) that decide the quantization; empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return frozenset(flags) & {"avx2", "avx512_vnni", "avx512bw", "avx512_bf16", "avx_vnni", "amx_int8"}


def quantization_for(backend: str, features: frozenset[str] | None = None) -> str:
    """The quantization a new store gets with `backend` on a CPU with `features` (default: this one)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown embedding backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend != "onnx-int8":
        return "fp32"
    features = cpu_features() if features is None else features
    if "avx512_vnni" in features:
        return "int8-dynamic-avx512_vnni"
    if "avx2" in features:
        return "int8-dynamic-avx2"
    return "fp32"


_said: set[tuple[str, str]] = set()


def announce(backend: str, quantization: str) -> None:
    """Say once per process which quantization the CPU detection chose for `backend`."""
    if backend == "onnx-int8" and (backend, quantization) not in _said:
        _said.add((backend, quantization))
        found = ", ".join(sorted(cpu_features())) or "none of avx2/avx512_vnni"
        print(f"embedding backend onnx-int8: {quantization} (CPU features: {found})", file=sys.stderr, flush=True)


class OnnxEncoder:
    """Encodes like the model's SentenceTransformer (truncation, pooling, unit length) with onnxruntime."""

    def __init__(self, model_dir: Path, onnx_file: Path, tokenizer, *, max_seq_length: int,
                 threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.tokenizer = tokenizer
        self.tokenizer.enable_truncation(max_seq_length)
        pad = tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else pad
        self.pooling = _pooling_mode(model_dir)

    def encode(self, texts: list[str]) -> np.ndarray:
        """One batch of texts -> unit vectors (float32)."""
        import numpy as np  # here, not at the top: `analyze ingest --help` imports this module for BACKENDS

        encodings = self.tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        types = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = encoding.ids, encoding.attention_mask, encoding.type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        hidden = self.session.run(None, {name: feed[name] for name in self.inputs})[0]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = np.where(mask[..., None] > 0, hidden, -np.inf).max(axis=1)
        else:
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _pooling_mode(model_dir: Path) -> str:
    """mean, cls or max, from a Transformer + Pooling (+ Normalize) model; anything else the ONNX path refuses."""
    modules = json.loads((model_dir / "modules.json").read_text()) if (model_dir / "modules.json").exists() else []
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    pooling_file = model_dir / "1_Pooling" / "config.json"
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]) or not pooling_file.exists():
        raise ValueError(f"the ONNX backends support Transformer + Pooling models; {model_dir} has {kinds or 'none'}")
    config = json.loads(pooling_file.read_text())
    modes = [k for k in ("pooling_mode_mean_tokens", "pooling_mode_cls_token", "pooling_mode_max_tokens")
             if config.get(k)]
    others = [k for k, v in config.items() if k.startswith("pooling_mode") and v is True and k not in modes]
    if len(modes) != 1 or others:
        raise ValueError(f"the ONNX backends support mean, cls or max pooling alone; {pooling_file} asks for "
                         f"{', '.join(modes + others) or 'none'}")
    return {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
            "pooling_mode_max_tokens": "max"}[modes[0]]
