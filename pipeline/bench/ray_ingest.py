"""Scale-out benchmark: the Ray engine against the local engine, one node against two, S3 (moto) against disk.

Same generated corpus (BENCH_RAY_FILES text files of about 8 chunks each) and the same cores for every run; Ray is
started before the timed ingest, so each figure is the pipeline's own throughput (the start-up is reported apart).
Ratios: ray/local ingest chunks/s (target >= 0.85), two 1-CPU nodes / one 1-CPU node (target >= 1.7),
s3/local ingest chunks/s and search p50 (moto on 127.0.0.1, so the S3 protocol's cost without a network's).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

FILES = int(os.environ.get("BENCH_RAY_FILES", "100"))
QUERIES = ["pump pressure", "valve torque", "seal maintenance", "ferry timetable", "orbit of Titan",
           "fleece of alpacas", "espresso price", "launch code", "installation steps", "night train"]
WORDS = ("pump valve seal torque pressure ferry harbour timetable orbit probe launch fleece alpaca llama "
         "espresso tart menu engine rotor bearing gasket flange manifold turbine").split()


def corpus(root: Path) -> Path:
    """FILES text files of sentences drawn from a fixed vocabulary (seeded: the same corpus every run)."""
    rng = random.Random(7)
    root.mkdir(parents=True, exist_ok=True)
    for n in range(FILES):
        paragraphs = [" ".join(f"The {rng.choice(WORDS)} of unit {rng.randint(1, 999)} is rated "
                               f"{rng.randint(1, 90)} {rng.choice(['bar', 'Nm', 'rpm'])}." for _ in range(12))
                      for _ in range(12)]
        (root / f"doc{n:04d}.txt").write_text(f"Report {n}\n\n" + "\n\n".join(paragraphs) + "\n")
    return root


def _ray_rate(docs: Path, store: Path, **init) -> dict:
    """The Ray engine with one embedding actor per CPU of the cluster."""
    import ray

    from pipeline.config import Settings
    from pipeline.ingest.ray import ingest_directory_ray

    started = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False, **init)
    startup = time.perf_counter() - started
    try:
        report = ingest_directory_ray(docs, Settings.from_env(store=store, embed_workers=0), progress=False)
    finally:
        ray.shutdown()
    return {"chunks": report.chunks, "seconds": round(report.seconds, 2), "chunks_per_s": round(report.chunks_per_s, 2),
            "ray_start_s": round(startup, 2)}


def _cluster_rate(docs: Path, store: Path, nodes: int) -> dict:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 256 << 20,
                                                            "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1, object_store_memory=256 << 20)
    cluster.wait_for_nodes()
    try:
        return _ray_rate(docs, store, address=cluster.address) | {"nodes": nodes}
    finally:
        cluster.shutdown()


def _local_rate(docs: Path, store: str, workers: int) -> dict:
    """The local engine with `workers` embedding processes (set: by default a corpus under 1 MiB gets one)."""
    from pipeline.config import Settings
    from pipeline.ingest.local import ingest_directory

    report = ingest_directory(docs, Settings.from_env(store=store, embed_workers=workers), progress=False)
    return {"chunks": report.chunks, "seconds": round(report.seconds, 2), "chunks_per_s": round(report.chunks_per_s, 2)}


def _search_p50(store: str) -> float:
    from pipeline.archive.store import Archive

    archive = Archive.open(store)
    archive.search(QUERIES[0])  # load the model and open the indexes
    times = []
    for query in QUERIES * 2:
        started = time.perf_counter()
        archive.search(query)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 2)


class _Moto:
    """A moto S3 server on 127.0.0.1 with one bucket, and the AWS variables pointing at it."""

    def __enter__(self) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": endpoint})
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/bench", method="PUT"), timeout=10).close()
        return "s3://bench/archive"

    def __exit__(self, *exc: object) -> None:
        self.server.terminate()
        self.server.wait(timeout=30)


def run(out_dir: Path) -> dict:
    from pipeline.ingest.embed import available_cores

    work = out_dir / "ray-ingest"
    shutil.rmtree(work, ignore_errors=True)
    docs = corpus(work / "docs")
    cores = available_cores()
    local = _local_rate(docs, str(work / "local"), cores)
    on_ray = _ray_rate(docs, work / "ray", num_cpus=cores, object_store_memory=256 << 20)
    one = _cluster_rate(docs, work / "one-node", 1)
    two = _cluster_rate(docs, work / "two-nodes", 2)
    with _Moto() as bucket:
        s3 = _local_rate(docs, bucket, cores)
        s3_p50, disk_p50 = _search_p50(bucket), _search_p50(str(work / "local"))
    return {
        "files": FILES, "cores": cores,
        "local_engine": local, "ray_engine": on_ray, "one_1cpu_node": one, "two_1cpu_nodes": two,
        "ray_over_local": round(on_ray["chunks_per_s"] / local["chunks_per_s"], 3),
        "two_nodes_over_one": round(two["chunks_per_s"] / one["chunks_per_s"], 3),
        "per_actor_chunks_per_s": one["chunks_per_s"],
        "s3_ingest": s3, "s3_over_disk_ingest": round(s3["chunks_per_s"] / local["chunks_per_s"], 3),
        "search_p50_ms": {"disk": disk_p50, "s3": s3_p50}, "s3_over_disk_search_p50": round(s3_p50 / disk_p50, 3),
    }
