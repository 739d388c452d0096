"""Search reads a local store through io_uring where the kernel allows it, and plainly, with the same results,
where it does not (here: a child process whose seccomp filter refuses io_uring_setup, as container profiles do)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from pipeline.archive import search, uring

pytestmark = pytest.mark.slow

QUERIES = ["Hydra-7 pump maximum pressure", "which animals produce soft wool", "espresso price"]

# A seccomp filter that fails io_uring_setup with ENOSYS and allows every other call, installed with prctl.
NO_URING = f"""
import ctypes
class F(ctypes.Structure): _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                                       ("k", ctypes.c_uint)]
class P(ctypes.Structure): _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(F))]
prog = (F * 4)(F(0x20, 0, 0, 0), F(0x15, 0, 1, {uring.IO_URING_SETUP}), F(0x06, 0, 0, 0x00050000 | 38),
               F(0x06, 0, 0, 0x7fff0000))
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(P(4, prog)), 0, 0):  # NO_NEW_PRIVS, SECCOMP filter
    raise SystemExit(77)  # this sandbox does not let a process filter its own system calls
"""

SEARCH = """
import json, sys
import numpy as np
from pipeline.archive import search, uring
from pipeline.archive.store import Archive
store, queries, vectors, force = json.loads(sys.argv[1])
if force:
    uring.available = lambda: True  # as if the probe passed and Lance's own reads then failed
chunks = Archive.open(store).chunks
found = [[search.hybrid_matches(chunks, np.asarray(v, dtype=np.float32), q)[0].tolist(),
          search.fts_matches(chunks, q).ids.tolist()] for q, v in zip(queries, vectors)]
print(json.dumps({"available": uring.available(), "uri": search._dataset(chunks).uri, "found": found}))
"""


def _matches(chunks, vectors) -> list:
    return [[search.hybrid_matches(chunks, v, q)[0].tolist(), search.fts_matches(chunks, q).ids.tolist()]
            for q, v in zip(QUERIES, vectors)]


def test_local_store_is_read_through_io_uring_where_available(tiny_archive):
    if not uring.available():
        pytest.skip("this kernel or container does not allow io_uring")
    assert search._dataset(tiny_archive.chunks).uri.startswith(uring.SCHEME)
    assert tiny_archive.search(QUERIES[0], top_k=1).hits[0].source == "manual.pdf"


@pytest.mark.skipif(sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"),
                    reason="the seccomp filter is written for Linux on x86_64 and aarch64")
@pytest.mark.parametrize("force", [False, True], ids=["probe-refused", "lance-refused"])
def test_without_io_uring_search_reads_plainly_with_the_same_results(tiny_archive, force):
    vectors = [tiny_archive.embedder.encode([q])[0] for q in QUERIES]
    expected = _matches(tiny_archive.chunks, vectors)
    args = json.dumps([str(tiny_archive.path), QUERIES, [v.tolist() for v in vectors], force])
    run = subprocess.run([sys.executable, "-c", NO_URING + SEARCH, args], capture_output=True, text=True, timeout=120)
    if run.returncode == 77:
        pytest.skip("this sandbox does not allow a seccomp filter")
    assert run.returncode == 0, run.stderr
    child = json.loads(run.stdout.splitlines()[-1])
    assert child["available"] is force  # the probe sees the refusal (or was overridden)
    assert not child["uri"].startswith(uring.SCHEME)
    assert child["found"] == expected
