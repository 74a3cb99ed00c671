"""What a webhook or an actor is told of an event, and the notification's id.

The id is derived from the event and the subscription, so it is the same on every retry, after a
restart and from any dispatcher: receivers deduplicate on it (``webhook-id``, ``ce-id``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..store.records import Document, EventRecord

NOTIFICATION_TYPE = "pipelinejob.event"
TEST_TYPE = "pipelinejob.test"


def message_id(record: EventRecord, subscription_id: str) -> str:
    """The id of an event's notification for a subscription."""
    import hashlib

    seed = f"{record.uuid}\n{record.seq}\n{record.slot}\n{record.event_uuid}\n{subscription_id}"
    return "msg_" + hashlib.sha256(seed.encode()).hexdigest()[:32]


def iso_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``."""
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def notification_body(
    subscription: Document, record: EventRecord, pipeline_uuid: str | None, msg_id: str, *, test: bool = False
) -> dict[str, Any]:
    """What a subscriber is told: never a token, a nonce or a secret. A test's sample names no job
    but the subscription's own, if it watches one."""
    body: dict[str, Any] = {
        "type": TEST_TYPE if test else NOTIFICATION_TYPE,
        "id": msg_id,
        "subscription": subscription["id"],
        "job_uuid": subscription.get("job_uuid") if test else record.uuid,
        "pipeline_uuid": pipeline_uuid,
        "state": record.state,
        "event": record.name,
        "event_uuid": record.event_uuid,
        "revision": record.seq,
        "time": iso_time(record.date),
    }
    if subscription.get("include_data", True) is not False:
        body["data"] = record.data
    return body


def encode(body: Any) -> bytes:
    """Compact JSON in UTF-8: the exact bytes that are signed and sent."""
    import json

    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str).encode()
