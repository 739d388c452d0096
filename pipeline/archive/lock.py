"""One writer per store: a store-wide writer lock held for a whole ingest run. Readers never take it.

`writer_lock(store, wait=...)` picks the implementation for the store's location:
- local stores: an OS file lock (`flock` on `<store>/.pagefault.lock`); the kernel releases it when the holder
  exits or is killed, so a dead writer never blocks the store;
- `s3://` stores: a lease object `<prefix>/.pagefault.lock`, created only if absent (a conditional PUT,
  `If-None-Match: *`), refreshed by a heartbeat thread (`If-Match` its own ETag) and deleted at the end. A lease
  not refreshed for LEASE_S seconds, by the server's own clock, belongs to a writer that died: the next writer
  takes it over (again conditionally, so of two contenders one wins).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

from pipeline.archive.location import CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S, RETRIES, Location, StoreError
from pipeline.files import utc_now

LOCK_FILE = ".pagefault.lock"
POLL_S = 0.2
LEASE_S = float(os.environ.get("ANALYZE_LEASE_SECONDS", "30"))  # an object-store lease not refreshed this long is dead
LEASE_POLL_S = 1.0  # how often a waiting writer looks at an object-store lease again


class StoreLocked(Exception):
    """Another writer holds the store (the message names it: host, pid, start time)."""


class WriterLock(Protocol):
    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, waiting up to `wait` seconds; `StoreLocked` naming the holder if it stays taken."""
        ...

    def release(self) -> None:
        ...

    def holder(self) -> str:
        """'host H, pid P, since T' of the current holder, as it recorded itself."""
        ...

    def check(self) -> None:
        """`StoreLocked` if the lock is no longer ours (an object-store lease taken over while we stalled)."""
        ...


def _describe(info: dict[str, Any]) -> str:
    return f"host {info['host']}, pid {info['pid']}, since {info['started']}"


def _locked(store: object, holder: str, wait: float) -> StoreLocked:
    waited = f" after waiting {wait:g}s" if wait else ""
    return StoreLocked(f"the store at {store} is being written by another ingest ({holder}){waited}; wait for it "
                       "to finish, or pass --wait SECONDS")


class LocalFileLock:
    """`flock` on a file inside the store directory; the file also says who holds it."""

    def __init__(self, store: Path) -> None:
        self.store = Path(store)
        self.path = self.store / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    os.close(fd)
                    raise _locked(self.store, holder, wait) from None
                time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": utc_now()}).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def check(self) -> None:
        """An flock cannot be lost while held: nothing to check."""

    def holder(self) -> str:
        """'host H, pid P, since T' as written by the holder, or a plain phrase when it has not said yet."""
        try:
            return _describe(json.loads(self.path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return "holder not yet recorded"


class S3Lease:
    """A lease object in an `s3://` store: created if absent, kept fresh by a heartbeat thread, deleted at the end.

    Needs a server with conditional writes (`If-None-Match`/`If-Match` on PUT): AWS S3, MinIO, moto and most
    S3-compatible stores have them. If the heartbeat ever finds the lease taken over (this process stalled for
    longer than LEASE_S), the loss is reported when the lock is released.
    """

    def __init__(self, store: Location, *, lease_s: float | None = None) -> None:
        self.store = store
        bucket, prefix = store.bucket_key
        self.bucket, self.key = bucket, "/".join(part for part in (prefix, LOCK_FILE) if part)
        self.lease_s = LEASE_S if lease_s is None else lease_s
        self.lost: str | None = None  # why the lease is no longer ours, when the heartbeat found it taken
        self._client = _s3_client(store)
        self._etag: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self, wait: float = 0.0) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + wait
        body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": utc_now(),
                           "lease_id": uuid.uuid4().hex, "lease_s": self.lease_s}).encode()
        while True:
            try:
                self._etag = self._put(body, IfNoneMatch="*")
                break
            except BotoCoreError as exc:
                raise self._error(exc) from None
            except ClientError as exc:
                if not _precondition_failed(exc):
                    raise self._error(exc) from None
            current = self._read()
            if current is None:
                continue  # released between our two requests: try again at once
            info, etag, age = current
            if age > float(info.get("lease_s", self.lease_s)):  # its holder died: take it over, if first to
                try:
                    self._etag = self._put(body, IfMatch=etag)
                    print(f"took over the lease of a writer that stopped ({_describe(info)}, "
                          f"silent for {age:.0f}s)", file=sys.stderr)
                    break
                except ClientError as exc:
                    if not _precondition_failed(exc):
                        raise self._error(exc) from None
                    continue
            if time.monotonic() >= deadline:
                raise _locked(self.store, _describe(info), wait) from None
            time.sleep(min(LEASE_POLL_S, max(POLL_S, deadline - time.monotonic())))
        self._body = body
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="pagefault-lease", daemon=True)
        self._beat.start()

    def release(self) -> None:
        from botocore.exceptions import ClientError

        if self._beat is None:
            return
        self._stop.set()
        self._beat.join()
        self._beat = None
        if self.lost is None:
            try:
                self._client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self._etag)
            except ClientError as exc:
                if not _precondition_failed(exc):  # a server without conditional deletes: check, then delete
                    current = self._read()
                    if current is not None and current[1] == self._etag:
                        self._client.delete_object(Bucket=self.bucket, Key=self.key)
        self._etag = None

    def holder(self) -> str:
        current = self._read()
        return _describe(current[0]) if current else "no holder"

    def check(self) -> None:
        if self.lost:
            raise StoreLocked(f"the store at {self.store} lost its writer lease during the run ({self.lost}); "
                              "check it with `analyze status` and rerun the ingest (with --repair if it reports "
                              "duplicates)")

    def _heartbeat(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        while not self._stop.wait(self.lease_s / 3):
            try:
                self._etag = self._put(self._body, IfMatch=self._etag)
            except ClientError as exc:
                if _precondition_failed(exc):
                    current = self._read()
                    self.lost = ("another writer took the store's lease over" +
                                 (f" ({_describe(current[0])})" if current else ""))
                    return
                # any other refusal (a 5xx, throttling): the next beat tries again, well inside the lease
            except BotoCoreError:
                pass  # a network blip: likewise

    def _put(self, body: bytes, **condition: str) -> str:
        return self._client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]

    def _read(self) -> tuple[dict[str, Any], str, float] | None:
        """(holder info, ETag, seconds since it was last written by the server's clock), or None if absent."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.key)
        except BotoCoreError as exc:
            raise self._error(exc) from None
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._error(exc) from None
        try:
            info = json.loads(response["Body"].read())
        except ValueError:
            info = {"host": "?", "pid": "?", "started": "?"}
        date = response["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date) if date else None
        age = (now - response["LastModified"]).total_seconds() if now else 0.0
        return info, response["ETag"], age

    def _error(self, exc: Exception) -> StoreError:
        """The one line for a server that refused or could not be reached (no credential is in it)."""
        error = getattr(exc, "response", {}).get("Error", {})
        if error.get("Code") == "NoSuchBucket":
            return StoreError(f"cannot reach the store at {self.store}: no bucket {self.bucket!r}")
        reason = f"{error.get('Code')}: {error.get('Message')}" if error else str(exc)
        return StoreError(f"cannot reach the store at {self.store} (for its writer lease): {reason}")


def _precondition_failed(exc: Any) -> bool:
    error = exc.response.get("Error", {})
    return error.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict") or \
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412)


def _s3_client(store: Location):
    """A boto3 S3 client for `store`, from the same AWS variables as Lance's storage options."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise StoreError(f"s3:// stores need boto3 for their writer lease: pip install boto3 ({exc})") from None
    options = store.storage_options() or {}
    return boto3.client(
        "s3", endpoint_url=options.get("aws_endpoint"), region_name=options.get("aws_region"),
        aws_access_key_id=options.get("aws_access_key_id"), aws_secret_access_key=options.get("aws_secret_access_key"),
        aws_session_token=options.get("aws_session_token"),
        config=Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=REQUEST_TIMEOUT_S,
                      retries={"max_attempts": RETRIES, "mode": "standard"}))


@contextlib.contextmanager
def writer_lock(store: Path | str | Location, *, wait: float = 0.0) -> Iterator[WriterLock]:
    """Hold the store's writer lock for the `with` block; `StoreLocked` if another writer keeps it."""
    location = Location.of(store)
    lock: LocalFileLock | S3Lease = S3Lease(location) if location.remote else LocalFileLock(Path(location.uri))
    lock.acquire(wait)
    try:
        yield lock
    finally:
        lock.release()
    lock.check()
