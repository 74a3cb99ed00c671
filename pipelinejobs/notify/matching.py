"""Which subscriptions an event concerns: what the event path (``service``, reactor.py) needs, and no more.

The subscription list is read at most every ``notifications.refresh_seconds`` per store object and
kept arranged by pipeline and by job, so matching an event reads nothing. This module imports no
sink, no HTTP client and nothing of the dispatcher: a cold reactor.py pays for none of them.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from ..settings import Settings
from ..store.base import JobStore
from ..store.records import Document
from .budget import budget


class SubscriptionIndex:
    """The subscription list arranged for matching: by pipeline uuid and by job uuid."""

    def __init__(self) -> None:
        self.by_id: dict[str, Document] = {}
        self.by_pipeline: dict[str, list[Document]] = {}
        self.by_job: dict[str, list[Document]] = {}

    @classmethod
    def of(cls, subscriptions: Iterable[Document]) -> SubscriptionIndex:
        index = cls()
        for sub in subscriptions:
            index.by_id[str(sub["id"])] = sub
            if sub.get("pipeline_uuid"):
                index.by_pipeline.setdefault(str(sub["pipeline_uuid"]), []).append(sub)
            elif sub.get("job_uuid"):
                index.by_job.setdefault(str(sub["job_uuid"]), []).append(sub)
        return index

    def matching(
        self, pipeline_uuid: Any, job_uuid: str, state: str, event: str, from_state: Any = None
    ) -> tuple[str, ...]:
        """Ids of the subscriptions told of ``event`` leading from ``from_state`` (when known) to ``state``.

        A subscription with ``changes_only`` (OpenLineage's: one run event per state change) hears
        only of events that change the job's state.
        """
        found: list[str] = []
        for sub in (*self.by_pipeline.get(str(pipeline_uuid), ()), *self.by_job.get(job_uuid, ())):
            if sub.get("states") and state not in sub["states"]:
                continue
            if sub.get("events") and event not in sub["events"]:
                continue
            if sub.get("changes_only") and from_state == state:
                continue
            found.append(str(sub["id"]))
        return tuple(found)


class _Cached:
    __slots__ = ("index", "until", "wake")

    def __init__(self, index: SubscriptionIndex, until: float) -> None:
        self.index, self.until, self.wake = index, until, threading.Event()


#: each store object's cached subscription list, forgotten with the store object
_CACHES: weakref.WeakKeyDictionary[JobStore, _Cached] = weakref.WeakKeyDictionary()


def subscriptions(store: JobStore, settings: Settings, *, fresh: bool = False) -> SubscriptionIndex:
    """The store's subscriptions, reread at most every ``notifications.refresh_seconds`` per store object.

    So a subscription added elsewhere (another process, the CLI) takes effect in a running
    serve within that time; one added through this store object takes effect at once.
    """
    cached = _CACHES.get(store)
    now = time.monotonic()
    if cached is not None and not fresh and now < cached.until:
        return cached.index
    index = SubscriptionIndex.of(store.list_subscriptions())
    refreshed = _Cached(index, now + budget(settings).refresh_seconds)
    if cached is not None:
        refreshed.wake = cached.wake
    _CACHES[store] = refreshed
    return index


def forget_cache(store: JobStore) -> None:
    """After this process changed the subscriptions: the next event rereads them."""
    cached = _CACHES.get(store)
    if cached is not None:
        cached.until = 0.0


def wake_event(store: JobStore) -> threading.Event | None:
    """What the store's dispatcher in this process waits on between passes (None before any read)."""
    cached = _CACHES.get(store)
    return None if cached is None else cached.wake


def matching(store: JobStore, settings: Settings, head: Document, event: str, state: str) -> tuple[str, ...]:
    """Ids of the subscriptions an event concerns (its job, the job's pipeline, the state it leads to,
    and whether it changes the job's state: ``head`` is the job as the event was judged against)."""
    index = subscriptions(store, settings)
    if not index.by_id:
        return ()
    return index.matching(head.get("pipeline_uuid"), str(head.get("uuid")), state, event, head.get("state"))
