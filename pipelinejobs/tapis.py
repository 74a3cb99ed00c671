"""Tapis v3 Jobs notifications delivered to a job's callback URL: job status -> PipelineJob event.

A Tapis v3 job subscription (``ManagedPipelineJob.tapis_subscriptions()``) makes the
Notifications service POST one JSON object per status change:
``{uuid, tenant, subscriptionName, eventUuid, event, deliveryTarget, created}``, where
``event.type`` is ``jobs.JOB_NEW_STATUS.<STATUS>``, ``event.subject`` the Tapis job
uuid and ``event.data`` a JSON-encoded *string* with ``newJobStatus``,
``oldJobStatus``, ``jobName``, ``jobUuid``, ``jobOwner``, ``message`` (more on
terminal statuses). The callback URL carries the PipelineJob ``uuid`` and ``token``.
"""

from __future__ import annotations

import json
from typing import Any

EVENT_TYPE_PREFIX = "jobs.JOB_NEW_STATUS."

_STATUS_EVENTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "PENDING",
            "PROCESSING_INPUTS",
            "STAGING_INPUTS",
            "STAGING_JOB",
            "SUBMITTING_JOB",
            "QUEUED",
            "ARCHIVING",
            "BLOCKED",
            "PAUSED",
        ),
        "resource",
    ),
    "RUNNING": "run",
    "FINISHED": "finish",
    "FAILED": "fail",
    "CANCELLED": "fail",
}

#: Never kept in a job's history: the delivery address is the callback URL, nonce and token included.
DROPPED_FIELDS = ("deliveryTarget",)


def event_for_status(status: str) -> str:
    """The PipelineJob event a Tapis v3 job status stands for; unknown statuses are updates."""
    return _STATUS_EVENTS.get(status.strip().upper(), "update")


def decode_data(raw: Any) -> Any:
    """``event.data`` decoded when it is a JSON string; anything else (text, an object) as it is."""
    if isinstance(raw, str | bytes):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def job_status(notification: dict[str, Any]) -> str:
    """``newJobStatus`` from the decoded data, else the last segment of ``event.type``."""
    event = notification.get("event") or {}
    data = decode_data(event.get("data"))
    if isinstance(data, dict) and isinstance(data.get("newJobStatus"), str) and data["newJobStatus"].strip():
        return data["newJobStatus"].strip().upper()
    return str(event.get("type", "")).rsplit(".", 1)[-1].strip().upper()


def event_data(notification: dict[str, Any]) -> dict[str, Any]:
    """What goes into the job's history: the notification with ``event.data`` decoded, minus the callback."""
    kept = {key: value for key, value in notification.items() if key not in DROPPED_FIELDS}
    event = kept.get("event")
    if isinstance(event, dict) and "data" in event:
        kept["event"] = {**event, "data": decode_data(event["data"])}
    return kept
