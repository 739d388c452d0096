"""`analyze batch --engine ray`: questions answered by agents on Ray actors; records still written here.

`run_batch` is unchanged: its threads hand each question to an idle actor and wait for the answer, and this
process stays the single writer, so resume, exactly-once ids, --retry-errors and Ctrl-C behave as locally.
Each actor has its own agent, chat client and archive opened at the one pinned version; --rpm is one rate
shared by the whole cluster (an actor hands out request slots).
"""

from __future__ import annotations

import os
import queue
import time
from typing import Any

from pipeline.batch import RateLimitedClient, RateLimiter
from pipeline.config import Settings


class Answerers:
    """`concurrency` answering actors, used as the `answer_fn` of `run_batch` (one question per actor at a time)."""

    def __init__(self, settings: Settings, *, version: int, concurrency: int, rpm: float | None) -> None:
        import ray

        from pipeline.archive.location import Location

        store = Location.of(settings.store)  # for the actors, whose working directory and environment differ
        store = store.carried() if store.remote else Location.of(os.path.abspath(store.uri))
        limiter = ray.remote(num_cpus=0)(_Slots).remote(rpm) if rpm else None
        actor = ray.remote(num_cpus=0, max_restarts=1)(_Answerer)
        self.actors = [actor.remote(settings, store, version, limiter) for _ in range(concurrency)]
        self.idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for handle in self.actors:
            self.idle.put(handle)

    def __call__(self, question: str) -> Any:
        import ray

        handle = self.idle.get()
        try:
            return ray.get(handle.answer.remote(question))
        finally:
            self.idle.put(handle)


class _Slots:
    """The cluster's one request rate: hands out evenly spaced slots; the caller does the waiting."""

    def __init__(self, rpm: float) -> None:
        self.limiter = RateLimiter(rpm, sleep=lambda seconds: None)

    def acquire(self) -> float:
        return self.limiter.acquire()


class _ClusterLimiter:
    """A `RateLimiter` look-alike that takes its slot from the cluster's `_Slots` actor."""

    def __init__(self, slots) -> None:
        self.slots = slots

    def acquire(self) -> float:
        import ray

        wait = ray.get(self.slots.acquire.remote())
        if wait > 0:
            time.sleep(wait)
        return wait


class _Answerer:
    """One agent: its own chat client and its own handle on the archive (`store`, a Location), pinned to
    `version`."""

    def __init__(self, settings: Settings, store, version: int, slots) -> None:
        from pipeline.archive.search import Fusion
        from pipeline.archive.store import Archive
        from pipeline.llm import make_client

        self.settings = settings
        self.archive = Archive.open(store, version=version, fusion=Fusion.from_settings(settings))
        client = make_client(settings)
        self.client = RateLimitedClient(client, _ClusterLimiter(slots)) if slots is not None else client

    def answer(self, question: str) -> Any:
        from pipeline.agent.loop import answer

        return answer(question, retriever=self.archive, client=self.client, settings=self.settings)
