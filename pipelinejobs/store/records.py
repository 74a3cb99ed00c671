"""The event log's records and what the stores answer about them: the types both stores share.

The record of truth is an append-only **event log**: every accepted event is one
record keyed by (job uuid, sequence number), where the sequence number is the
job's revision after the event. Appending the record *is* the compare-and-set:
the log's unique key admits one record per revision, so racing writers
serialise on it, and a delivery id (``event_id``) is unique per job, so a
retried delivery can only ever be answered from the record it already made.
The job document is a bounded summary that python-datacatalog readers
understand (``state``, ``last_event``, ``updated``, ``_properties`` and a window
of the latest ``history`` entries); it never grows with the event count.
"""

from __future__ import annotations

import enum
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

Document = dict[str, Any]

#: Fields of a job that deciding an event needs: never its history or data.
HEAD_FIELDS = ("uuid", "state", "pipeline_uuid", "updated", "_visible", "_properties", "_admin", "_salt")

#: How many history entries a job document keeps, and how large an entry's data may be in it.
DEFAULT_HISTORY_WINDOW = 100
MIN_HISTORY_WINDOW = 10
DEFAULT_INLINE_DATA_BYTES = 65536


class Outcome(str, enum.Enum):
    """What became of a logged message."""

    APPLIED = "applied"  # changed the job: state, history, revision
    STALE = "stale"  # a scheduler callback the job is already past: kept in the log, job unchanged
    IMPORTED = "imported"  # a history entry the job had before it had a log (python-datacatalog)
    HEARTBEAT = "heartbeat"  # a sign of life, logged at most once per interval: job unchanged
    TASK = "task"  # a workflow engine's report on one of its tasks: kept in the log, job unchanged


@dataclass(frozen=True)
class EventRecord:
    """One record of the event log.

    ``seq`` is the job's revision after an applied event; a stale record carries the
    revision it was judged against and ``slot`` = its own event uuid (so it never takes
    a revision's place); imported entries have ``seq`` -1 and ``slot`` = their position.
    """

    uuid: str
    seq: int
    event_uuid: str
    name: str
    date: datetime
    data: dict[str, Any] | None
    state: str
    outcome: Outcome = Outcome.APPLIED
    slot: str = ""
    via: str = "message"
    event_id: str | None = None
    digest: str | None = None  # of (name, data): tells a retried delivery from a different one
    #: subscriptions to notify of this record: written with it, atomically (the outbox)
    notify: tuple[str, ...] = ()

    @property
    def cursor(self) -> str:
        """An opaque, stable position for paginating a job's log."""
        return f"{self.seq}:{self.slot}"

    def history_entry(self, inline_data_bytes: int) -> Document:
        """The entry a job document's ``history`` holds for this record (compat §4 key order)."""
        from ..documents import inline_data

        return {
            "date": self.date,
            "data": inline_data(self.data, inline_data_bytes, self.seq),
            "name": self.name,
            "uuid": self.event_uuid,
        }

    def to_document(self) -> Document:
        doc: Document = {
            "uuid": self.uuid,
            "seq": self.seq,
            "slot": self.slot,
            "event_uuid": self.event_uuid,
            "name": self.name,
            "date": self.date,
            "data": self.data,
            "state": self.state,
            "outcome": self.outcome.value,
            "via": self.via,
        }
        if self.event_id is not None:
            doc["event_id"] = self.event_id
        if self.digest is not None:
            doc["digest"] = self.digest
        return doc

    @classmethod
    def from_document(cls, doc: Document) -> EventRecord:
        return cls(
            uuid=doc["uuid"],
            seq=int(doc["seq"]),
            slot=str(doc.get("slot") or ""),
            event_uuid=doc["event_uuid"],
            name=doc["name"],
            date=doc["date"],
            data=doc.get("data"),
            state=doc.get("state") or "",
            outcome=Outcome(doc.get("outcome") or "applied"),
            via=doc.get("via") or "message",
            event_id=doc.get("event_id"),
            digest=doc.get("digest"),
        )


class Append(str, enum.Enum):
    APPLIED = "applied"  # the record is in the log and the job reflects it
    REPLAYED = "replayed"  # the job already has a record with this delivery id: ``existing``
    MOVED = "moved"  # the job changed since it was read (or vanished): read it again


@dataclass(frozen=True)
class AppendResult:
    status: Append
    existing: EventRecord | None = None


@dataclass(frozen=True)
class HistoryPage:
    """A page of a job's full history, oldest first; ``next`` continues it (None at the end)."""

    records: list[EventRecord] = field(default_factory=list)
    next: str | None = None


#: "no condition" for :meth:`JobStore.touch_watch`'s ``logged_at``
ANY_LOGGED: Any = object()


def parse_cursor(cursor: str | None) -> tuple[int, str] | None:
    """A :attr:`EventRecord.cursor` back as (seq, slot); None for the start; ValueError when malformed."""
    if cursor is None:
        return None
    seq, sep, slot = cursor.partition(":")
    if not sep:
        raise ValueError("a history cursor is 'SEQ:SLOT'")
    return int(seq), slot


def imported_record(uuid: str, position: int, entry: Document) -> EventRecord:
    """A history entry a job had before it had a log, as a log record (seq -1, ordered by position)."""
    date = entry.get("date")
    return EventRecord(
        uuid=uuid,
        seq=-1,
        slot=f"{position:08d}",
        event_uuid=str(entry.get("uuid") or f"imported-{position}"),
        name=str(entry.get("name") or ""),
        date=date if isinstance(date, datetime) else datetime.fromtimestamp(0, timezone.utc),
        data=entry.get("data") if isinstance(entry.get("data"), dict) else None,
        state="",
        outcome=Outcome.IMPORTED,
        via="history",
    )


def unlogged_history(uuid: str, history: Any, after: tuple[int, str] | None, limit: int) -> HistoryPage:
    """A page of the history of a job the old library wrote and no event has touched since: its
    document's ``history`` entries as imported records (both stores answer such a job so)."""
    rows = [imported_record(uuid, i, entry) for i, entry in enumerate(history if isinstance(history, list) else [])]
    return page_of(rows[position_index(rows, after) :], limit)


def creation_record(job: Document) -> EventRecord:
    """The log record of a job's ``create`` (seq 0): the job's data, as datacatalog's create entry has it."""
    entry = job["history"][0]
    return EventRecord(
        uuid=job["uuid"],
        seq=0,
        event_uuid=entry["uuid"],
        name="create",
        date=entry["date"],
        data=job.get("data"),
        state=job["state"],
        via="create",
    )


def removed_key(uuid: str, tombstone: Document) -> str:
    """Where a force-deleted job's log is kept: its uuid and the deletion time, never a live job's key."""
    date = tombstone.get("date")
    stamp = date.strftime("%Y%m%dT%H%M%SZ") if isinstance(date, datetime) else "removed"
    return f"{uuid}~deleted~{stamp}~{secrets.token_hex(4)}"


def position_index(rows: list[EventRecord], after: tuple[int, str] | None) -> int:
    if after is None:
        return 0
    return next((i for i, r in enumerate(rows) if (r.seq, r.slot) > after), len(rows))


def page_of(rows: list[EventRecord], limit: int) -> HistoryPage:
    """The first ``limit`` rows; ``next`` points after the last when more follow."""
    page = rows[:limit]
    more = len(rows) > limit
    return HistoryPage(page, page[-1].cursor if more and page else None)


#: One segment of a ``progress`` path: a name made by this package's adapters, never a user's text.
PROGRESS_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


def progress_path(key: str) -> list[str]:
    """The segments of a ``set_progress`` key (``failed.12`` -> ``["failed", "12"]``); ValueError otherwise."""
    segments = key.split(".")
    if len(segments) > 3 or not all(PROGRESS_KEY.fullmatch(segment) for segment in segments):
        raise ValueError(f"not a progress field: {key[:80]!r}")
    return segments
