"""The one error type of the project.

Every rejection carries a kind (what front ends map to exit codes and HTTP
statuses), a message written for a person, and details that are safe to show:
field names, schema titles, states and event names, never submitted values.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorKind(str, enum.Enum):
    """Why a message was rejected; the value is what clients see."""

    BAD_MESSAGE = "bad_message"  # not parseable, or fits no schema
    UNAUTHORIZED = "unauthorized"  # missing or wrong job/admin token
    NOT_FOUND = "not_found"  # unknown job or pipeline
    INVALID_TRANSITION = "invalid_transition"  # the job's state does not allow the event
    CONFLICT = "conflict"  # the job kept changing under us; safe to retry
    STORAGE_UNAVAILABLE = "storage_unavailable"  # the database cannot be reached
    REMOTE_UNAVAILABLE = "remote_unavailable"  # an actor/messages URL cannot be reached or failed (5xx)
    CONFIGURATION = "configuration"  # the deployment is misconfigured
    INTERNAL = "internal"  # a bug; details are in the (redacted) log

    @classmethod
    def from_value(cls, value: object) -> ErrorKind | None:
        """The kind named in an error answer (e.g. from a remote manager), or None."""
        try:
            return cls(value)
        except ValueError:
            return None


class PipelineJobsError(Exception):
    """A rejection with a kind, a human message and allow-listed details."""

    def __init__(self, kind: ErrorKind, message: str, **details: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "error", "kind": self.kind.value, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    def __repr__(self) -> str:
        return f"PipelineJobsError({self.kind.value!r}, {self.message!r})"
