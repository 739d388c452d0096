"""The Ray engine on a two-node cluster (two raylets on this machine), reached by address as a real one is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from conftest import write_pdf  # noqa: E402
from pipeline.config import Settings  # noqa: E402
from pipeline.ingest.local import ingest_directory  # noqa: E402
from pipeline.testing import CHILD_TIMEOUT  # noqa: E402
from test_ray_ingest import assert_same_store  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent


@pytest.fixture
def two_nodes():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 128 << 20,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=128 << 20)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_ingest_on_a_two_node_cluster_stores_what_the_local_engine_stores(tmp_path, embedder, two_nodes):
    """A real `analyze ingest --engine ray --ray-address` process joins the cluster, as on a real one."""
    corpus = tmp_path / "corpus"  # PDFs: the cluster's fresh workers then never load unstructured's models
    corpus.mkdir()
    for n in range(4):
        write_pdf(corpus / f"report-{n}.pdf", [f"Report {n} page {p}: valve {n} holds {n * p} bar." for p in (1, 2, 3)])
    local = Settings.from_env(store=tmp_path / "local")
    ingest_directory(corpus, local, progress=False, embedder=embedder)
    env = {k: v for k, v in os.environ.items() if k not in ("ANALYZE_ENGINE", "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-c", "from pipeline.cli import main; main()", "ingest", str(corpus),
                           "--store", str(tmp_path / "ray"), "--engine", "ray", "--ray-address", two_nodes.address,
                           "-q"], env=env | {"PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 new" in proc.stdout
    assert_same_store(tmp_path / "ray", local.store)
