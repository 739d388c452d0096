"""The Ray engine on a real local Ray: the same store as the local engine, incrementally, through faults."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from click.testing import CliRunner  # noqa: E402

from conftest import RAY_CANARY, batch_stamps, write_pdf, write_tiny_corpus  # noqa: E402
from pipeline.archive.store import Archive  # noqa: E402
from pipeline.cli import main  # noqa: E402
from pipeline.config import Settings  # noqa: E402
from pipeline.ingest.local import ingest_directory  # noqa: E402
from pipeline.ingest.ray import ingest_directory_ray  # noqa: E402
from pipeline.testing import CHILD_TIMEOUT  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent


def state(store: Path) -> tuple[list, list, np.ndarray]:
    """Chunk rows (all but the vector), document rows (all but the time), vectors: each in chunk_id order."""
    archive = Archive.open(store)
    table = archive.chunks.to_arrow().sort_by("chunk_id")
    rows = table.drop_columns(["vector"]).to_pylist()
    docs = sorted(tuple(v for k, v in row.items() if k != "ingested_at") for row in archive.document_rows().values())
    return rows, docs, np.array(table["vector"].to_pylist(), dtype=np.float32)


def assert_same_store(got: Path, want: Path) -> None:
    rows, docs, vectors = state(got)
    want_rows, want_docs, want_vectors = state(want)
    assert rows == want_rows
    assert docs == want_docs
    np.testing.assert_allclose(vectors, want_vectors, atol=1e-5)


def mixed_corpus(root: Path) -> Path:
    write_tiny_corpus(root)
    write_pdf(root / "long.pdf", [f"Page {i} describes valve {i} and its torque of {i * 3} Nm." for i in range(1, 7)])
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (root / "empty.txt").write_text("")
    (root / "table.xlsx").write_bytes(b"not supported")
    return root


def _kill_an_embedding_actor(stop: threading.Event, killed: list[int], raylet: str) -> None:
    """SIGKILL the first embedding actor process of this session's Ray (its raylet's pid is `raylet`; another
    Ray on the machine, a benchmark's, is left alone) once it has loaded its model and taken work."""
    while not stop.is_set() and not killed:
        for entry in Path("/proc").iterdir():
            try:
                title = (entry / "cmdline").read_bytes().decode(errors="replace")
                ours = f"RAY_RAYLET_PID={raylet}".encode() in (entry / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if title.startswith("ray::MapWorker(MapBatches(_EmbedActor)).") and entry.name.isdigit() and ours:
                os.kill(int(entry.name), signal.SIGKILL)  # busy in a method call: a batch is in flight
                killed.append(int(entry.name))
                break
        time.sleep(0.05)


def test_ray_engine_stores_what_the_local_engine_stores_through_a_killed_actor_and_a_reingest(
        tmp_path, embedder, local_ray):
    corpus = mixed_corpus(tmp_path / "corpus")
    # one embedding actor: on 2 cores a second model copy costs the test more than it saves
    local = Settings.from_env(store=tmp_path / "local")
    on_ray = Settings.from_env(store=tmp_path / "ray", embed_workers=1)
    want = ingest_directory(corpus, local, progress=False, embedder=embedder)

    raylet = local_ray.get(local_ray.remote(num_cpus=0)(lambda: os.environ["RAY_RAYLET_PID"]).remote())
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_an_embedding_actor, args=(stop, killed, raylet), daemon=True)
    killer.start()
    try:
        got = ingest_directory_ray(corpus, on_ray, progress=False, embedder=embedder)
    finally:
        stop.set()
        killer.join()
    assert killed, "no embedding actor was seen to kill"
    assert (got.new, got.chunks, got.pages, sorted(got.failures)) == \
        (want.new, want.chunks, want.pages, sorted(want.failures))
    assert batch_stamps(got)[1] == got.chunks  # the killed actor's batch counted once, by the actor that finished it
    assert_same_store(on_ray.store, local.store)

    (corpus / "orbit.txt").write_text("Mission log\n\nThe Kestrel probe left Titan in 2035.\n")
    (corpus / "menu.html").unlink()
    (corpus / "new.md").write_text("# Ferries\n\nThe night ferry to Tallinn leaves at 22:15.\n")
    write_pdf(corpus / "long.pdf", [f"Page {i} describes valve {i} and its torque of {i * 3} Nm." if i != 3 else
                                    "Page 3 now describes the spare seal kit." for i in range(1, 7)])
    want = ingest_directory(corpus, local, progress=False, embedder=embedder)
    got = ingest_directory_ray(corpus, on_ray, progress=False, embedder=embedder)
    assert (got.new, got.changed, got.unchanged, got.removed, got.chunks) == \
        (want.new, want.changed, want.unchanged, want.removed, want.chunks) == (1, 2, 2, 1, want.chunks)
    # the changed PDF's five unchanged pages keep their stored vectors, on Ray as with the local engine
    assert got.embedded == want.embedded <= want.chunks - 5
    assert_same_store(on_ray.store, local.store)
    hits = Archive.open(on_ray.store, embedder=embedder).search("night ferry Tallinn").hits
    assert hits and hits[0].source == "new.md"


KILLER = textwrap.dedent("""
    import os, signal, sys
    import lance
    from pipeline.config import Settings
    from pipeline.ingest.ray import ingest_directory_ray
    commit = lance.LanceDataset.commit
    def commit_then_die(*args, **kwargs):
        commit(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # the chunks landed, their document rows did not
    lance.LanceDataset.commit = commit_then_die
    ingest_directory_ray(sys.argv[1], Settings.from_env(store=sys.argv[2], embed_workers=1), progress=False)
""")


def test_driver_killed_after_the_chunk_commit_then_rerun_equals_a_clean_run(tmp_path, embedder, local_ray):
    corpus = mixed_corpus(tmp_path / "corpus")
    clean = Settings.from_env(store=tmp_path / "clean")
    ingest_directory(corpus, clean, progress=False, embedder=embedder)
    crashed = tmp_path / "crashed"
    # the killed driver joins the module's Ray (as a driver joins a cluster), so no Ray is started for it
    env = os.environ | {"PYTHONPATH": str(ROOT), "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(corpus), str(crashed)], env=env, capture_output=True,
                          text=True, timeout=CHILD_TIMEOUT)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert Archive.open(crashed).count() > 0 and not Archive.open(crashed).document_rows().get("long.pdf")
    ingest_directory_ray(corpus, Settings.from_env(store=crashed), progress=False, embedder=embedder)
    assert_same_store(crashed, clean.store)


def test_ray_actors_embed_with_the_stores_backend(tmp_path, local_ray, model_cache):
    corpus = write_tiny_corpus(tmp_path / "corpus")
    local = Settings.from_env(store=tmp_path / "local", embed_backend="onnx-int8", embed_workers=1)
    ingest_directory(corpus, local, progress=False)
    report = ingest_directory_ray(corpus, local.with_(store=tmp_path / "ray", embed_workers=0), progress=False)
    assert report.failed == 0 and Archive.open(tmp_path / "ray").meta.embed_backend == "onnx-int8"
    assert_same_store(tmp_path / "ray", tmp_path / "local")  # torch's vectors would differ by far more than 1e-5


def test_an_unreachable_cluster_is_one_line_and_exit_1(tmp_path):
    corpus = write_tiny_corpus(tmp_path / "corpus")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", "from pipeline.cli import main; main()", "ingest", str(corpus), "--store",
                           str(tmp_path / "s"), "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", "-q"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"Error: cannot reach the Ray cluster at 127.0.0.1:{port}: "
                                                f"Connection refused"]


def test_cli_engine_option_and_env_reach_settings(tmp_path, monkeypatch):
    import pipeline.ingest.ray

    seen = []
    monkeypatch.setattr(pipeline.ingest.ray, "ingest_directory_ray",
                        lambda directory, settings, **kw: seen.append((settings.engine, settings.ray_address))
                        or pipeline.ingest.ray.IngestReport())
    (tmp_path / "docs").mkdir()
    CliRunner().invoke(main, ["ingest", str(tmp_path / "docs"), "--engine", "ray", "--ray-address", "h:1"],
                       catch_exceptions=False)
    monkeypatch.setenv("ANALYZE_ENGINE", "ray")
    monkeypatch.setenv("RAY_ADDRESS", "h:2")
    CliRunner().invoke(main, ["ingest", str(tmp_path / "docs")], catch_exceptions=False)
    assert seen == [("ray", "h:1"), ("ray", "h:2")]


def test_the_workers_of_a_local_ray_hold_no_secrets(local_ray):
    @local_ray.remote(num_cpus=0)
    def variable(name: str) -> str | None:
        return os.environ.get(name)

    assert local_ray.get(variable.remote("PATH"))  # the workers do have an environment
    assert local_ray.get(variable.remote(RAY_CANARY[0])) is None
