"""The job list as both stores answer it: which jobs (a filter), in what order, a page at a time.

Lists are ordered by (creation time desc, uuid desc), an order a job never moves in, so pages
stay stable while jobs are added; a page's ``next`` is an opaque cursor. Each job is shown as
a summary that never holds its data, history or credentials.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .records import Document

#: What a job list shows of each job, and where each field lives in the job document: never ``data``,
#: ``history``, ``_admin`` or ``_salt``. Both stores read exactly these paths (MongoDB's projection,
#: SQLite's columns) and build the summary with :func:`job_summary`.
JOB_SUMMARY_PATHS: dict[str, str] = {
    "uuid": "uuid",
    "state": "state",
    "pipeline_uuid": "pipeline_uuid",
    "archive_path": "archive_path",
    "archive_system": "archive_system",
    "session": "session",
    "agent": "agent",
    "task": "task",
    "child_of": "child_of",
    "last_event": "last_event",
    "created": "_properties.created_date",
    "updated": "updated",
    "revision": "_properties.revision",
    "visible": "_visible",
}
JOB_SUMMARY_FIELDS = tuple(JOB_SUMMARY_PATHS)


def job_summary(values: dict[str, Any]) -> Document:
    """A job's summary from the stored values of its fields (keyed by summary field, times as datetimes):
    the same on both stores, a job of the old library (no revision, no ``_visible``) included."""
    summary = {name: values.get(name) for name in JOB_SUMMARY_FIELDS}
    summary["child_of"] = list(summary["child_of"] or [])
    summary["revision"] = summary["revision"] or 0
    summary["visible"] = summary["visible"] is not False
    return summary


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a list or a count covers; every field narrows it, and each has an index.

    Ranges are half open: ``*_after`` inclusive, ``*_before`` exclusive. ``archive_path``
    matches a substring (case-sensitive) of the job's archive path.
    """

    states: tuple[str, ...] = ()
    pipeline_uuid: str | None = None
    session: str | None = None
    child_of: str | None = None
    archive_path: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    include_hidden: bool = False

    def without_states(self) -> JobFilter:
        from dataclasses import replace

        return replace(self, states=())


@dataclass(frozen=True)
class JobPage:
    """A page of job summaries, newest created first; ``next`` continues after the last (None at the end)."""

    jobs: list[Document] = field(default_factory=list)
    next: str | None = None


def job_cursor(created: datetime | None, uuid: str) -> str:
    """An opaque position in a job list ordered by (created desc, uuid desc).

    The creation time never changes, so a job never moves in this order: jobs created
    while someone pages land before the first page and never shift the later ones.
    """
    import base64
    import json

    stamp = created.astimezone(timezone.utc).isoformat() if isinstance(created, datetime) else ""
    raw = json.dumps([stamp, uuid], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_job_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """A :func:`job_cursor` back as (created, uuid); None for the start; ValueError when malformed."""
    import base64
    import binascii
    import json

    if cursor is None or cursor == "":
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        stamp, uuid = value
        created = datetime.fromisoformat(stamp)
    except (ValueError, TypeError, binascii.Error, RecursionError) as exc:
        raise ValueError("not a job list cursor") from exc
    if not isinstance(uuid, str) or created.tzinfo is None:
        raise ValueError("not a job list cursor")
    return created.astimezone(timezone.utc), uuid


def page_of_jobs(rows: list[Document], limit: int) -> JobPage:
    """The first ``limit`` summaries; ``next`` points after the last when more follow."""
    page = rows[:limit]
    more = len(rows) > limit and bool(page)
    return JobPage(page, job_cursor(page[-1]["created"], page[-1]["uuid"]) if more else None)


# -- job counts: visible jobs per (state, pipeline), kept with the writes that move a job ----------------
@dataclass(frozen=True)
class Recount:
    """What a recount of the visible jobs did to the counters /metrics reads.

    ``applied`` is False when the counters moved while the jobs were being counted (MongoDB): nothing
    was changed then, and the recount is worth trying again. ``corrections`` is what the counters were
    off by, per (state, pipeline): jobs written by others (python-datacatalog), or a writer that died
    between its job's update and the counters'.
    """

    applied: bool
    corrections: dict[tuple[str, str], int] = field(default_factory=dict)
    seconds: float = 0.0


def count_corrections(
    counted: dict[tuple[str, str], int], actual: dict[tuple[str, str], int]
) -> dict[tuple[str, str], int]:
    """Per (state, pipeline), how far ``actual`` is from ``counted`` (only the pairs that differ)."""
    keys = dict.fromkeys([*counted, *actual])
    return {key: actual.get(key, 0) - counted.get(key, 0) for key in keys if actual.get(key, 0) != counted.get(key, 0)}
