"""The one-writer lock on s3:// stores: a lease object on a real S3-compatible server (moto), real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.archive.lock import S3Lease, StoreLocked, writer_lock
from pipeline.archive.location import Location

pytest.importorskip("moto")

ROOT = Path(__file__).parent.parent
ENV = {"PYTHONPATH": str(ROOT)}  # added to the environment of the moment (the fixture sets the AWS variables)
HOLDER = """
import os, signal, sys, time
from pipeline.archive.lock import S3Lease
from pipeline.archive.location import Location
lease = S3Lease(Location.of(sys.argv[1]), lease_s=float(sys.argv[2]))
lease.acquire()
print("held", flush=True)
sys.stdin.readline()  # the test says when to go on
try:
    lease.check()
    print("still ours", flush=True)
except Exception as exc:
    print(exc, flush=True)
lease.release()
"""


def hold(store: str, lease_s: float) -> subprocess.Popen:
    """A real process holding the store's lease (refreshed by its heartbeat) until told to go on."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, store, str(lease_s)], env=os.environ | ENV, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc


def lease_object(store: str) -> bool:
    return ".pagefault.lock" in Location.of(store).list_names()


def test_a_second_writer_fails_at_once_naming_the_holder_or_waits_for_it(tmp_path, s3_bucket):
    holder = hold(s3_bucket, lease_s=30)
    try:
        (tmp_path / "docs").mkdir()
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-c", "from pipeline.cli import main; main()", "ingest",
                              str(tmp_path / "docs"), "--store", s3_bucket, "-q"], env=os.environ | ENV,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 1
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
        assert (f"the store at {s3_bucket} is being written by another ingest (host {os.uname().nodename}, "
                f"pid {holder.pid}, since 20") in out.stderr
        assert "--wait SECONDS" in out.stderr
        assert "not-a-real-secret" not in out.stderr + out.stdout

        lease = S3Lease(Location.of(s3_bucket))
        with pytest.raises(StoreLocked, match="after waiting 1.5s"):
            before = time.monotonic()
            lease.acquire(wait=1.5)
        assert time.monotonic() - before >= 1.5  # a live holder (its heartbeat beats) is waited for, not taken
        assert time.monotonic() - started < 100

        waiter = threading.Thread(target=lambda: lease.acquire(wait=60))
        waiter.start()
        time.sleep(1)
        assert waiter.is_alive()  # still waiting for the holder
        holder.communicate("go\n", timeout=30)
        waiter.join(timeout=30)
        assert not waiter.is_alive()
        assert f"pid {os.getpid()}," in lease.holder()
        lease.release()
        assert not lease_object(s3_bucket)  # released: the lease object is gone
    finally:
        holder.kill()


def test_a_killed_holder_blocks_the_store_only_until_its_lease_expires(s3_bucket):
    holder = hold(s3_bucket, lease_s=3)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lease_object(s3_bucket)  # what a crash leaves behind
    with pytest.raises(StoreLocked, match=f"pid {holder.pid}"):
        writer_lock(s3_bucket).__enter__()  # not yet expired: refused at once
    started = time.monotonic()
    with writer_lock(s3_bucket, wait=30) as lock:
        assert time.monotonic() - started < 10
        assert f"pid {os.getpid()}," in lock.holder()
    assert not lease_object(s3_bucket)


def test_two_writers_racing_for_a_free_store_one_wins(s3_bucket):
    leases = [S3Lease(Location.of(s3_bucket)) for _ in range(4)]
    barrier, outcomes = threading.Barrier(len(leases)), []

    def race(lease: S3Lease) -> None:
        barrier.wait()
        try:
            lease.acquire()
            outcomes.append("won")
        except StoreLocked:
            outcomes.append("refused")

    threads = [threading.Thread(target=race, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["refused", "refused", "refused", "won"]
    for lease in leases:
        lease.release()
    assert not lease_object(s3_bucket)


def test_a_writer_that_stalled_past_its_lease_learns_it_lost_the_store(s3_bucket):
    holder = hold(s3_bucket, lease_s=2)
    try:
        holder.send_signal(signal.SIGSTOP)  # frozen: its heartbeat stops
        with writer_lock(s3_bucket, wait=30):  # taken over once the lease is 2 s old
            holder.send_signal(signal.SIGCONT)
            time.sleep(1.5)  # its next heartbeat finds the lease no longer its own
            out, _ = holder.communicate("go\n", timeout=30)
        assert "lost its writer lease during the run (another writer took the store's lease over (host" in out
        assert f"pid {os.getpid()}," in out
    finally:
        holder.kill()
