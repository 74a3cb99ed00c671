"""Agave v2 job-notification callbacks: job status -> PipelineJob event (compat §6)."""

from __future__ import annotations

from typing import Any

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
