"""The notification outbox in the store contract (issue 10): its items and what both stores add for it.

Apart from ``base.py`` so that the event path (reactor.py's cold start above all) does not
build these types: only the dispatcher and the subscription commands import this module.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from .base import Document, EventRecord


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


class NotifyStore(Protocol):
    """What both stores add to :class:`JobStore` for notifications (``pipelinejobs.notify`` uses it)."""

    def save_subscription(self, subscription: Document) -> None: ...

    def list_subscriptions(self) -> list[Document]: ...

    def find_subscription(self, subscription_id: str) -> Document | None: ...

    def delete_subscription(self, subscription_id: str) -> bool: ...

    def claim_notifications(self, now: datetime, *, until: datetime, owner: str, limit: int) -> list[OutboxItem]:
        """Lease up to ``limit`` due outbox items to dispatcher ``owner`` until ``until`` and return them.

        While the lease lasts no other dispatcher is given them; a crashed holder's lease runs out.
        Both stores lease the whole outbox to one dispatcher at a time (one small row or document,
        renewed by its holder once half of it has passed), so delivering costs no write per item
        before the settlement.
        """

    def settle_notifications(self, owner: str, settled: list[Settled], deliveries: list[Document]) -> int:
        """Record ``deliveries`` and, for each item ``owner`` still holds, leave its ``pending``
        (none: the item is done) due at ``due``; how many items were settled."""

    def release_notifications(self, owner: str) -> None:
        """Give up what ``owner`` holds (a dispatcher stopping), so another need not wait for the lease to run out."""

    def event_fates(
        self, items: list[OutboxItem], *, now: datetime, grace_seconds: float
    ) -> list[tuple[EventFate, str | None]]:
        """For each item: whether its event is applied, and its job's pipeline uuid.

        On MongoDB a record logged but not applied after ``grace_seconds`` is rolled forward (its
        writer died between its two statements), as the job's next writer would.
        """

    def expire_deliveries(self, now: datetime) -> int:
        """Forget delivery records whose ``expires_at`` has passed (MongoDB's TTL index does it too)."""

    def list_deliveries(
        self, *, job_uuid: str | None = None, subscription: str | None = None, limit: int = 100
    ) -> list[Document]:
        """Delivery attempts, newest first."""
