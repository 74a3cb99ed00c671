"""Delivery records (one per attempt, kept ``delivery_days``) and what a dispatcher pass reports."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..store.records import Document, EventRecord
from .budget import Budget

if TYPE_CHECKING:
    from ..sinks.base import Attempt


def delivery_record(
    *,
    subscription: Document | None,
    subscription_id: str,
    record: EventRecord | None,
    msg_id: str,
    attempt: int,
    outcome: str,
    tried: Attempt | None,
    at: datetime,
    plan: Budget,
    note: str | None = None,
) -> Document:
    """One row of ``pipelinejobs subscription deliveries``: what was tried, when and how it went.

    Never a secret: the target is shown without its query, and a sink's error text holds none.
    """
    target = None
    if subscription is not None:
        from ..sinks.registry import sink_of

        sink = sink_of(subscription)
        target = sink.destination(subscription) if sink is not None else None
    return {
        "webhook_id": msg_id,
        "subscription": subscription_id,
        "job_uuid": record.uuid if record else None,
        "event": record.name if record else None,
        "event_uuid": record.event_uuid if record else None,
        "revision": record.seq if record else None,
        "target": target,
        "attempt": attempt,
        # delivered | failed (will retry) | gave_up | refused (by policy) | skipped | dropped | test
        "outcome": outcome,
        "status": tried.status if tried else None,
        "error": (tried.error if tried else None) or note,
        "duration_ms": tried.duration_ms if tried else None,
        "at": at,
        "expires_at": at + timedelta(days=plan.delivery_days),
    }


class DrainReport:
    """What a pass or a drain did: delivered, retrying, gave up, refused (by the outbound policy),
    skipped (nothing to tell: an OpenLineage run already ended), dropped (the event or the subscription
    is gone), waiting (MongoDB: logged, not yet applied; looked at again later)."""

    def __init__(self) -> None:
        self.delivered = self.retrying = self.gave_up = self.refused = self.skipped = self.dropped = self.waiting = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def add(self, other: DrainReport) -> None:
        for name, value in other.__dict__.items():
            setattr(self, name, getattr(self, name) + value)
