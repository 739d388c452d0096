"""Scale-out benchmark: the Ray engine against the local engine, one node against two, S3 (moto) against disk.

Same generated corpus (BENCH_RAY_FILES text files of 12 chunks each) and the same cores for every run, each into a
fresh store; Ray is started before the timed ingest, so each figure is the pipeline's own throughput (Ray's start
is reported apart). The configurations run in turn for BENCH_RAY_ROUNDS rounds, every other one in reverse order,
and each rate is its runs' chunks over their seconds. Run it on a quiet machine: other load takes cores from one
configuration and not another.
Each configuration has two rates: the whole run (planning, model loads, embedding, commit, indexes), and the
steady one, from the report's embedding-batch stamps (`IngestReport.embed_batches`): with N actors (or local
workers), the chunks of the batches after the N-th to finish over the time from the N-th to the last. Counting
from the first batch instead would credit the window with the other actors' first batches, mostly embedded
before it opened (about 5% too fast for two actors and ten batches each). `startup_s` is the time to the first
batch, `steady_from_s` to the N-th (start and model loads included); a run with N batches or fewer has no
steady rate.
Ratios, whole-run and steady: ray/local ingest chunks/s (target >= 0.85), two 1-CPU nodes / one 1-CPU node
(target >= 1.7; each node pinned to a core of its own, the driver to the head's: `_cluster_rate`); s3/local
ingest chunks/s and search p50 (moto on 127.0.0.1, so the S3 protocol's cost without a network's). A cluster
run also reports `core_busy`, the share of the run (Ray's start included) each of the first two cores was busy:
where two nodes scale short of 2x, it says whether a core waited.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Iterator

FILES = int(os.environ.get("BENCH_RAY_FILES", "100"))
ROUNDS = int(os.environ.get("BENCH_RAY_ROUNDS", "2"))
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


def _figures(report, actors: int) -> dict:
    """A run's whole-run rate, its start-up (to the first embedding batch) and its steady part: the batches after
    the `actors`-th, over the time from it to the last."""
    batches = sorted(report.embed_batches)
    warm = batches[min(actors, len(batches)) - 1][0]
    return {"chunks": report.chunks, "seconds": round(report.seconds, 2), "chunks_per_s": round(report.chunks_per_s, 2),
            "batches": len(batches), "startup_s": round(batches[0][0], 2), "steady_from_s": round(warm, 2),
            "steady_chunks": sum(chunks for _, chunks in batches[actors:]),
            "steady_seconds": round(batches[-1][0] - warm, 2)}


def _ray_rate(docs: Path, store: Path, actors: int, **init) -> dict:
    """The Ray engine with one embedding actor per CPU of the cluster (`actors` of them)."""
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
    return _figures(report, actors) | {"ray_start_s": round(startup, 2)}


@contextlib.contextmanager
def _on_core(core: int) -> Iterator[None]:
    """This process (and what it starts meanwhile, which inherits it) on one core; the cores it had, after."""
    had = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, had)


def _cpu_times() -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies of each CPU so far, from /proc/stat (empty where there is none)."""
    times = {}
    with contextlib.suppress(OSError), open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                ticks = [int(v) for v in values]
                times[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))  # idle and iowait aside
    return times


def _busy_since(before: dict[int, tuple[int, int]], cores: list[int]) -> list[float | None]:
    """The share of time each of `cores` was busy since `before` (any process's work, ours or not)."""
    after = _cpu_times()
    return [round((after[c][0] - before[c][0]) / max(1, after[c][1] - before[c][1]), 3)
            if c in after and c in before else None for c in cores]


def _cluster_rate(docs: Path, store: Path, nodes: int) -> dict:
    """A local cluster of `nodes` 1-CPU nodes, each node's processes (raylet, object store, workers) pinned to a
    core of its own and the driver to the head node's, as on a real cluster of 1-CPU machines: unpinned, one
    1-CPU node would borrow the second core for its driver, parse and write tasks, and its rate would not be
    one CPU's."""
    from ray.cluster_utils import Cluster

    cores = sorted(os.sched_getaffinity(0))
    with _on_core(cores[0]):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 256 << 20,
                                                                "include_dashboard": False})
    for n in range(1, nodes):
        with _on_core(cores[n % len(cores)]):
            cluster.add_node(num_cpus=1, object_store_memory=256 << 20)
    cluster.wait_for_nodes()
    try:
        with _on_core(cores[0]):
            before = _cpu_times()
            figures = _ray_rate(docs, store, nodes, address=cluster.address)
            return figures | {"nodes": nodes, "pinned": True, "core_busy": _busy_since(before, cores[:2])}
    finally:
        cluster.shutdown()


def _local_rate(docs: Path, store: str, workers: int) -> dict:
    """The local engine with `workers` embedding processes (set: by default a corpus under 1 MiB gets one)."""
    from pipeline.config import Settings
    from pipeline.ingest.local import ingest_directory

    report = ingest_directory(docs, Settings.from_env(store=store, embed_workers=workers), progress=False)
    return _figures(report, workers)


def _search_p50s(stores: dict[str, str]) -> dict[str, float]:
    """Median search time (ms) on each store, the stores taking turns query by query (drift hits them alike)."""
    from pipeline.archive.store import Archive

    archives = {name: Archive.open(store) for name, store in stores.items()}
    for archive in archives.values():
        archive.search(QUERIES[0])  # load the model and open the indexes
    times: dict[str, list[float]] = {name: [] for name in archives}
    for query in QUERIES * 2:
        for name, archive in archives.items():
            started = time.perf_counter()
            archive.search(query)
            times[name].append(time.perf_counter() - started)
    return {name: round(statistics.median(values) * 1000, 2) for name, values in times.items()}


@contextlib.contextmanager
def _bucket() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with one bucket, and the AWS variables pointing at it; the store prefix."""
    from pipeline.testing import moto_server

    with moto_server() as endpoint:
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": endpoint})
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/bench", method="PUT"), timeout=10).close()
        yield "s3://bench/archive"


def _total(runs: list[dict], actors: int) -> dict:
    """Runs of one configuration summed: their chunks over their seconds is its rate, their steady chunks over
    their steady seconds its steady rate (None if no run had a steady part); per actor: over `actors`."""
    chunks, seconds = sum(r["chunks"] for r in runs), sum(r["seconds"] for r in runs)
    steady_chunks, steady_seconds = sum(r["steady_chunks"] for r in runs), sum(r["steady_seconds"] for r in runs)
    steady = round(steady_chunks / steady_seconds, 2) if steady_seconds else None
    return {"chunks_per_s": round(chunks / seconds, 2), "steady_chunks_per_s": steady, "actors": actors,
            "steady_per_actor_chunks_per_s": steady and round(steady / actors, 2),
            "startup_s": round(statistics.mean(r["startup_s"] for r in runs), 2), "runs": runs}


def run(out_dir: Path) -> dict:
    from pipeline.ingest.embed import available_cores

    work = out_dir / "ray-ingest"
    shutil.rmtree(work, ignore_errors=True)
    docs = corpus(work / "docs")
    cores = available_cores()
    with _bucket() as bucket:
        engines = {
            "local_engine": lambda n: _local_rate(docs, str(work / f"local-{n}"), cores),
            "ray_engine": lambda n: _ray_rate(docs, work / f"ray-{n}", cores, num_cpus=cores,
                                              object_store_memory=256 << 20),
            "one_1cpu_node": lambda n: _cluster_rate(docs, work / f"one-node-{n}", 1),
            "two_1cpu_nodes": lambda n: _cluster_rate(docs, work / f"two-nodes-{n}", 2),
            "s3_ingest": lambda n: _local_rate(docs, f"{bucket}-{n}", cores),
        }
        actors = {"local_engine": cores, "ray_engine": cores, "one_1cpu_node": 1, "two_1cpu_nodes": 2,
                  "s3_ingest": cores}  # embedding workers or actors
        runs: dict[str, list[dict]] = {name: [] for name in engines}
        for n in range(ROUNDS):  # in turn, every other round backwards: a drift in machine speed hits all alike
            for name in (list(engines) if n % 2 == 0 else list(engines)[::-1]):
                runs[name].append(engines[name](n))
        p50 = _search_p50s({"disk": str(work / "local-0"), "s3": f"{bucket}-0"})
    rate = {name: _total(values, actors[name]) for name, values in runs.items()}

    def ratio(a: str, b: str, key: str = "chunks_per_s") -> float | None:
        return round(rate[a][key] / rate[b][key], 3) if rate[a][key] and rate[b][key] else None

    return {
        "files": FILES, "cores": cores, "rounds": ROUNDS, **rate,
        "ray_over_local": ratio("ray_engine", "local_engine"),
        "ray_over_local_steady": ratio("ray_engine", "local_engine", "steady_chunks_per_s"),
        "two_nodes_over_one": ratio("two_1cpu_nodes", "one_1cpu_node"),
        "two_nodes_over_one_steady": ratio("two_1cpu_nodes", "one_1cpu_node", "steady_chunks_per_s"),
        "per_actor_chunks_per_s": rate["one_1cpu_node"]["chunks_per_s"],
        "per_actor_steady_chunks_per_s": rate["one_1cpu_node"]["steady_chunks_per_s"],
        "s3_over_disk_ingest": ratio("s3_ingest", "local_engine"),
        "search_p50_ms": p50, "s3_over_disk_search_p50": round(p50["s3"] / p50["disk"], 3),
        "targets": {"ray_over_local": 0.85, "two_nodes_over_one": 1.7},
    }
