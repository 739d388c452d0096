"""The Ray cluster a run uses: joined by address, or a local one started for the run (dashboard off)."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from pipeline.redact import SECRET_ENV, SECRET_NAME

OBJECT_STORE_BYTES = 512 << 20  # the object store of a Ray started for one run: what travels is small
CONNECT_TIMEOUT_S = 5.0  # to reach a cluster's address at all (Ray itself retries an unreachable one for minutes)


class ClusterError(Exception):
    """No Ray cluster at the address given (one line for the user)."""


class ray_session:
    """Join the cluster at `address` (Settings reads it from --ray-address or RAY_ADDRESS), or with None start a
    new local Ray for the run; a Ray already initialised in this process is used as it is. Only a Ray started or
    joined here is shut down (left) on exit."""

    def __init__(self, address: str | None, *, progress: bool = True) -> None:
        self.address, self.progress, self.started = address, progress, False

    def __enter__(self) -> "ray_session":
        if importlib.util.find_spec("ray") is None or importlib.util.find_spec("lance_ray") is None:
            raise ClusterError("--engine ray needs the ray extra: pip install 'pagefault[ray]'")
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR",
                                      "log_to_driver": self.progress}
            try:
                if self.address:
                    _reachable(self.address)
                    ray.init(address=self.address, **kwargs)
                else:
                    with without_secrets():  # the processes of a local Ray inherit this environment
                        # "local": a new Ray of our own, never one that something else runs on this machine
                        ray.init(address="local", object_store_memory=OBJECT_STORE_BYTES, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                where = f"reach the Ray cluster at {self.address}" if self.address else "start a local Ray"
                raise ClusterError(f"cannot {where}: {first}") from None
            self.started = True
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = self.progress
        if not self.progress:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import ray

            ray.shutdown()


@contextlib.contextmanager
def without_secrets() -> Iterator[None]:
    """This process's environment without API keys and cloud credentials, for the `with` block (while a local Ray
    starts, so that its workers never hold them: what they need reaches them as arguments)."""
    removed = {name: os.environ.pop(name) for name in list(os.environ)
               if name in SECRET_ENV or SECRET_NAME.search(name)}
    try:
        yield
    finally:
        os.environ.update(removed)


def _reachable(address: str) -> None:
    """Raise ClusterError unless something listens at a `host:port` (or `ray://host:port`) address."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and the like: Ray itself finds the cluster, or says it found none
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None
