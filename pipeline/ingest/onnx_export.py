"""ONNX copies of a sentence-transformers model: exported from the files on disk, once, into the model cache.

A copy lives in `ANALYZE_MODEL_CACHE/onnx/<model hash>-<quantization>/` as `model.onnx` beside `manifest.json`
(its sha256, the model's content hash, the quantization, the onnxruntime that made it). A copy whose file does not
match its manifest (a crash mid-write, a bad disk) is exported again. Exporters take a file lock and write under
temporary names that are renamed into place, so embedding workers, or a search beside an ingest, never see half a
file and never export twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.gguf import model_cache_dir
from pipeline.ingest.discover import sha256_file

MODEL_FILE = "model.onnx"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Recipe:
    """How an export is made from the model: optionally fused, optionally quantized to int8."""

    fused: bool = False  # onnxruntime's transformer optimizer first (attention, LayerNorm and GELU fused)
    int8: dict[str, Any] | None = None  # `quantize_dynamic` options; None: fp32
    keep_fp32: str | None = None  # a regex: the nodes whose names it finds stay fp32 (with `int8`)


FFN_OUTPUT = r"layer\.\d+/output/dense/MatMul$"  # a BERT layer's feed-forward output projection (not attention's)

# quantization name -> recipe. Signed int8 weights run on VNNI's u8s8 dot products; on AVX2 the same instruction
# saturates at 16 bits, so its weights keep 7 bits (onnxruntime's advice). `quantization_for` picks among
# fp32 and the two int8-dynamic ones; the rest are alternatives `python -m pipeline.bench backends` measures
# (README, Performance: on an AVX2 CPU none of them keeps Cranfield within the default's quality slack).
RECIPES: dict[str, Recipe] = {
    "fp32": Recipe(),
    "int8-dynamic-avx512_vnni": Recipe(int8={"per_channel": True, "reduce_range": False}),
    "int8-dynamic-avx2": Recipe(int8={"per_channel": True, "reduce_range": True}),
    "int8-dynamic-avx2-per-tensor": Recipe(int8={"per_channel": False, "reduce_range": True}),
    "fp32-fused": Recipe(fused=True),
    "int8-dynamic-avx2-fused": Recipe(fused=True, int8={"per_channel": True, "reduce_range": True}),
    # the weight MatMuls only (the embedding tables' Gathers stay fp32); unsigned weights make u8u8 products
    "int8-dynamic-u8": Recipe(int8={"per_channel": True, "reduce_range": False, "weight_type": "QUInt8",
                                    "op_types_to_quantize": ["MatMul"]}),
    "int8-dynamic-avx2-matmul": Recipe(int8={"per_channel": True, "reduce_range": True,
                                             "op_types_to_quantize": ["MatMul"]}),
    # ... with the feed-forward output projection (its input, GELU's output, has the widest range) left fp32
    "int8-dynamic-avx2-ffn-out-fp32": Recipe(int8={"per_channel": True, "reduce_range": True,
                                                   "op_types_to_quantize": ["MatMul"]},
                                             keep_fp32=FFN_OUTPUT),
    "int8-dynamic-u8-ffn-out-fp32": Recipe(int8={"per_channel": True, "reduce_range": False, "weight_type": "QUInt8",
                                                 "op_types_to_quantize": ["MatMul"]}, keep_fp32=FFN_OUTPUT),
}


def model_hash(model_dir: Path) -> str:
    """sha256 over the model's files (names and contents), which is what an export is made from."""
    digest = hashlib.sha256()
    for file in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(file.relative_to(model_dir).as_posix().encode() + b"\0" + sha256_file(file).encode() + b"\0")
    return digest.hexdigest()


def exported_model(model_dir: Path, quantization: str, *, cache_dir: Path | None = None) -> Path:
    """The path of the verified ONNX copy of `model_dir` with `quantization` (a RECIPES key), exporting it first
    if the cache has no intact one."""
    if quantization not in RECIPES:
        raise ValueError(f"unknown quantization {quantization!r}; use one of {', '.join(RECIPES)}")
    source = model_hash(model_dir)
    target = (cache_dir or model_cache_dir()) / "onnx" / f"{source[:16]}-{quantization}"
    if _intact(target, source):
        return target / MODEL_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one exporter at a time; the others wait and find its result
        if not _intact(target, source):
            _export(model_dir, quantization, source, target)
    return target / MODEL_FILE


def _intact(target: Path, source: str) -> bool:
    try:
        manifest = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    file = target / MODEL_FILE
    return (manifest.get("model_sha256") == source and file.is_file()
            and file.stat().st_size == manifest.get("size") and sha256_file(file) == manifest.get("sha256"))


def _export(model_dir: Path, quantization: str, source: str, target: Path) -> None:
    import onnxruntime

    started = time.perf_counter()
    print(f"exporting {model_dir} to ONNX ({quantization}) into {target} (once) ...", file=sys.stderr, flush=True)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as work:
        recipe, final = RECIPES[quantization], Path(work) / "fp32.onnx"
        _export_fp32(model_dir, final)
        if recipe.fused:
            final = _fuse(final, Path(work) / "fused.onnx")
        if recipe.int8 is not None:
            final = _quantize(final, Path(work) / "int8.onnx", recipe.int8, recipe.keep_fp32)
        manifest = {"model_sha256": source, "quantization": quantization, "sha256": sha256_file(final),
                    "size": final.stat().st_size, "onnxruntime": onnxruntime.__version__,
                    "export_seconds": round(time.perf_counter() - started, 2)}
        (target / MANIFEST).unlink(missing_ok=True)  # no manifest vouches for the file while it is replaced
        os.replace(final, target / MODEL_FILE)
        (Path(work) / MANIFEST).write_text(json.dumps(manifest))
        os.replace(Path(work) / MANIFEST, target / MANIFEST)
    print(f"exported in {manifest['export_seconds']:.1f}s", file=sys.stderr, flush=True)


def _fuse(source: Path, out: Path) -> Path:
    """onnxruntime's BERT fusions (into its own Attention, SkipLayerNormalization and Gelu operators)."""
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet_logging():
        optimize_model(str(source), model_type="bert", num_heads=0, hidden_size=0, opt_level=0).save_model_to_file(str(out))
    return out


def _quantize(source: Path, out: Path, options: dict[str, Any], keep_fp32: str | None) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = {"weight_type": "QInt8"} | options
    excluded = [node.name for node in onnx.load(str(source), load_external_data=False).graph.node
                if keep_fp32 and re.search(keep_fp32, node.name)]
    with _quiet_logging():  # its advice to pre-process is for CNNs
        quantize_dynamic(source, out, nodes_to_exclude=excluded,
                         extra_options={"DefaultTensorType": 1},  # FLOAT, for tensors shape inference misses
                         **options | {"weight_type": QuantType[options["weight_type"]]})
    return out


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """onnxruntime's tools log advice and progress at INFO/WARNING on the root logger: errors only, meanwhile."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _export_fp32(model_dir: Path, out: Path) -> None:
    """The transformer's last hidden state as an ONNX graph with dynamic batch and sequence axes."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager").eval()
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if _uses_token_types(model_dir) else [])

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    sample = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(LastHidden(), sample, str(out), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)


def _uses_token_types(model_dir: Path) -> bool:
    config = json.loads((model_dir / "config.json").read_text())
    return int(config.get("type_vocab_size", 0) or 0) > 0

