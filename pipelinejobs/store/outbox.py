"""The notification outbox in the store contract: its items and what both stores add for it.

Apart from ``base.py`` so that the event path (reactor.py's cold start above all) does not
build these types: only the dispatcher and the subscription commands import this module.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, NamedTuple

from .records import Document, EventRecord


class OutboxItem(NamedTuple):
    """A logged event some subscriptions are still to be told of.

    Written with the event's log record in the same atomic step (MongoDB: fields of the
    record itself; SQLite: an ``outbox`` row in the event's transaction), so an item exists
    exactly when its event was logged. ``pending`` are the subscription ids not yet served;
    they are tried together, so one ``attempts`` count covers them.
    """

    uuid: str
    seq: int
    slot: str
    pending: tuple[str, ...]
    attempts: int
    due: datetime
    record: EventRecord | None  # None: the event is gone (its job was removed or purged)
    ref: Any = None  # the store's own handle on the item (MongoDB: its log record's _id)


class EventFate(str, enum.Enum):
    """What became of an outbox item's event, as the dispatcher must know before telling anyone."""

    APPLIED = "applied"  # the job shows it: notify
    PENDING = "pending"  # logged, not applied yet (a writer is between its two statements): later
    GONE = "gone"  # it will never be applied (the job moved on without it, or was removed): drop


class Settled(NamedTuple):
    """What a dispatcher leaves of an item it held: the subscriptions still pending (none: done)."""

    item: OutboxItem
    pending: tuple[str, ...]
    attempts: int
    due: datetime


def lease_is_young(held: tuple[datetime, datetime] | None, now: datetime) -> bool:
    """Whether a lease its holder took at ``held[0]``, until ``held[1]``, is in its first half at ``now``.

    Both stores let a dispatcher skip the lease write then: it renews once half has passed, so a
    lease never runs out under a live holder (unless a pass outlasts half of it).
    """
    return held is not None and held[0] <= now < held[0] + (held[1] - held[0]) / 2


def outbox_fields(record: EventRecord) -> Document:
    """The outbox fields a log record carries on MongoDB while subscriptions wait for it (due now)."""
    return {"notify": list(record.notify), "notify_due": record.date, "notify_attempts": 0}
