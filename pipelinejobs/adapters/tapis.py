"""Tapis v3 Jobs notifications delivered to a job's callback URL: job status -> PipelineJob event.

A Tapis v3 job subscription (``ManagedPipelineJob.tapis_subscriptions()``) makes the
Notifications service POST one JSON object per status change:
``{uuid, tenant, subscriptionName, eventUuid, event, deliveryTarget, created}``, where
``event.type`` is ``jobs.JOB_NEW_STATUS.<STATUS>``, ``event.subject`` the Tapis job
uuid and ``event.data`` a JSON-encoded *string* with ``newJobStatus``,
``oldJobStatus``, ``jobName``, ``jobUuid``, ``jobOwner``, ``message`` (more on
terminal statuses). The callback URL carries the PipelineJob ``uuid`` and ``token``.

Recognised by a body whose ``event`` is an object, without a ``name`` (or ``event``) URL
parameter. Credential: the ``uuid`` and ``token`` URL parameters. Delivery id:
``delivery_id`` below, or the ``event_id`` URL parameter.
"""

from __future__ import annotations

import json
from typing import Any

from ..bundled_schemas import Misfit, fits, title
from ..errors import ErrorKind, PipelineJobsError
from ..intake import Intake
from ..limits import MAX_DEPTH, check_json_value, event_id_or_none
from ..message_types import EventMessage
from .base import MINE, NOT_MINE, Verdict, misfit, validated_event, with_params

VIA = "tapis"
SCHEDULER = True
CHANNELS = frozenset({"messages"})

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


class _NotJson(ValueError):
    """NaN or Infinity: Python's json accepts them, JSON does not."""


def _refuse_constant(name: str) -> Any:
    raise _NotJson(name)


def decode_data(raw: Any) -> Any:
    """``event.data`` decoded when it is a JSON string; anything else (text, an object) as it is.

    The decoded value gets the same rules as a whole message (no NaN or Infinity, no
    lone surrogates, integers within 64 bits, at most ``MAX_DEPTH`` levels), so a
    JSON string inside a notification is no way around them.
    """
    if not isinstance(raw, str | bytes):
        return raw
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except _NotJson:
        raise PipelineJobsError(
            ErrorKind.BAD_MESSAGE, "event.data: holds NaN or Infinity, which are not JSON", field="event.data"
        ) from None
    except RecursionError:
        raise PipelineJobsError(
            ErrorKind.BAD_MESSAGE,
            f"event.data: objects and arrays are nested deeper than the limit of {MAX_DEPTH} levels",
            field="event.data",
        ) from None
    except ValueError:
        return raw
    check_json_value(value, "event.data", depth=2)  # inside the notification (1) and its event (2)
    return value


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


def delivery_id(notification: dict[str, Any]) -> str | None:
    """``tapis:<eventUuid>`` (else ``tapis:<uuid>``), or None when the notification has neither.

    Sound because Tapis Notifications gives each event its own ``eventUuid`` and
    redelivers a notification unchanged, ``uuid`` included, when a delivery fails;
    so one id means one job status change, however often it arrives.
    """
    for name in ("eventUuid", "uuid"):
        value = notification.get(name)
        candidate = event_id_or_none("tapis:" + value) if isinstance(value, str) else None
        if candidate:
            return candidate
    return None


def recognise(intake: Intake) -> Verdict:
    body, params = intake.body, intake.params
    if (
        not (isinstance(body, dict) and isinstance(body.get("event"), dict))
        or params.get("name")
        or params.get("event")
    ):
        return NOT_MINE
    shown = title("tapisv3") + " (callback with uuid parameter)"
    if not fits("tapisv3", body):
        return misfit(Misfit(shown, "tapisv3", body))
    if not params.get("uuid"):
        return misfit(Misfit(shown, reason="needs the uuid URL parameter"))
    return MINE


def to_message(intake: Intake) -> EventMessage:
    notification, params = intake.body, intake.params
    status = job_status(notification)
    fields: dict[str, Any] = {
        "uuid": params["uuid"],
        "name": event_for_status(status),
        "data": event_data(notification),
    }
    fields = with_params(fields, params, delivery_id(notification))
    return validated_event(fields, VIA, "the Tapis notification's URL parameters", status or None)
