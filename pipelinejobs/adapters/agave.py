"""Agave v2 job-notification callbacks: job status -> PipelineJob event (compat §6).

Recognised by a ``status`` URL parameter beside a body that fits the Agave job record
(AgaveJobsPost). Credential: the ``uuid`` and ``token`` URL parameters of the callback URL
that ``ManagedPipelineJob`` gave Agave. Delivery id: ``delivery_id`` below, or the
``event_id`` URL parameter.
"""

from __future__ import annotations

from typing import Any

from ..bundled_schemas import Misfit, fits, title
from ..intake import Intake
from ..limits import event_id_or_none
from ..message_types import EventMessage
from .base import MINE, NOT_MINE, Verdict, misfit, validated_event, with_params

VIA = "agave"
SCHEDULER = True
CHANNELS = frozenset({"messages"})

_STATUS_EVENTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "CREATED",
            "PERMISSION_GRANT",
            "PERMISSION_REVOKE",
            "PENDING",
            "STAGING_INPUTS",
            "CLEANING_UP",
            "ARCHIVING",
            "STAGING_JOB",
            "PAUSED",
            "QUEUED",
            "SUBMITTING",
            "STAGED",
            "PROCESSING_INPUTS",
            "ARCHIVING_FINISHED",
        ),
        "resource",
    ),
    "RUNNING": "run",
    "HEARTBEAT": "heartbeat",  # a sign of life: recorded as last_seen, never a history entry
    "FINISHED": "finish",
    **dict.fromkeys(("FAILED", "STOPPED", "DELETED", "ARCHIVING_FAILED"), "fail"),
}

#: Parts of the Agave job record that are not worth keeping in the job's history.
DROPPED_FIELDS = ("_links", "retries", "localId")


def event_for_status(status: str) -> str:
    """The event an Agave job status stands for; KILLED and unknown ones are updates."""
    return _STATUS_EVENTS.get(status.strip().upper(), "update")


def event_data(job_record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in job_record.items() if key not in DROPPED_FIELDS}


#: Statuses an Agave job enters at most once: its creation and the terminal statuses. Agave never
#: leaves a terminal status (a resubmission is a new job with a new id). Every other status may
#: recur in one job's life: staging and queueing statuses on Agave's submission retries, PAUSED and
#: RUNNING around a pause (the RUNNING notification is persistent), permission changes, heartbeats.
#: KILLED is left out as an update, like the other statuses that map to ``update``.
ONCE_STATUSES = frozenset(
    {"CREATED", "FINISHED", "FAILED", "STOPPED", "ARCHIVING_FINISHED", "ARCHIVING_FAILED", "DELETED"}
)


def delivery_id(job_record: dict[str, Any], status: str) -> str | None:
    """A delivery id for an Agave callback, or None where none would be sound.

    ``agave:<job id>:<STATUS>[:<lastUpdated>]``. Sound because a job id names one Agave
    job and a status in ``ONCE_STATUSES`` happens at most once in its life: every
    delivery carrying the pair reports the same occurrence, so a retried webhook is
    recognised as a replay. ``lastUpdated``, when the record has it, pins the id to
    the record as it was at that moment. For a status that can recur, the same id
    would make a genuine second occurrence look like a replay, so there is none.
    """
    status = status.strip().upper()
    job_id = job_record.get("id")
    if status not in ONCE_STATUSES or not isinstance(job_id, str) or not job_id:
        return None
    parts = ["agave", job_id, status]
    if isinstance(job_record.get("lastUpdated"), str) and job_record["lastUpdated"]:
        parts.append(job_record["lastUpdated"])
    return event_id_or_none(":".join(parts))


def recognise(intake: Intake) -> Verdict:
    if not (isinstance(intake.body, dict) and intake.params.get("status")):
        return NOT_MINE
    if fits("agavejobs", intake.body):
        return MINE
    return misfit(Misfit(title("agavejobs") + " (callback with status parameter)", "agavejobs", intake.body))


def to_message(intake: Intake) -> EventMessage:
    record, params = intake.body, intake.params
    status = params["status"]
    if "$" in status:  # the notification's ${JOB_STATUS} macro was not expanded
        status = str(record.get("status", ""))
    fields: dict[str, Any] = {
        "uuid": params.get("uuid", ""),
        "name": event_for_status(status),
        "data": event_data(record),
    }
    fields = with_params(fields, params, delivery_id(record, status))
    return validated_event(fields, VIA, "the Agave callback's URL parameters", status.strip().upper() or None)
