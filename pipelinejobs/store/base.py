"""What the business code needs of storage, and nothing more.

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
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

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
    #: subscriptions to notify of this record (issue 10): written with it, atomically (the outbox)
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


class JobStore(Protocol):
    """The storage protocol shared by the MongoDB and the embedded backends (each a context manager)."""

    backend: str
    #: True when a call is short CPU work in this process (SQLite), not a wait on a server: serve then runs
    #: a message in place, as a worker-thread hop (GIL hand-offs) costs more than the call itself
    local: bool

    def __enter__(self) -> JobStore: ...

    def __exit__(self, *exc: object) -> None: ...

    def describe(self) -> str:
        """Which store this is and where, never with a password: for start lines and error details."""

    def ensure_indexes(self) -> None:
        """Create the indexes and tables (``pipelinejobs db init``); safe to call every time."""

    def missing_indexes(self) -> list[str]:
        """Names of required indexes that do not exist (empty when the store is ready)."""

    # -- pipelines ---------------------------------------------------------------------------
    def find_pipeline(self, uuid: str) -> Document | None: ...

    def save_pipeline(self, pipeline: Document) -> tuple[Document, bool]:
        """Insert a pipeline unless its ``uuid`` or ``id`` is taken; returns (stored, created).

        When taken, ``stored`` is the pipeline holding the uuid if there is one, else the one
        holding the id.
        """

    def list_pipelines(self) -> list[Document]: ...

    # -- jobs --------------------------------------------------------------------------------
    def find_head(self, uuid: str) -> Document | None:
        """The job's :data:`HEAD_FIELDS` (hidden or not), or None: what deciding an event needs."""

    def find_job(self, uuid: str) -> Document | None:
        """The whole job document as datacatalog lays it out (history window included), or None."""

    def list_jobs(
        self,
        *,
        state: str | None = None,
        pipeline_uuid: str | None = None,
        include_hidden: bool = False,
        limit: int = 100,
    ) -> list[Document]: ...

    def insert_job(self, job: Document, audit: Document) -> tuple[Document, bool]:
        """Insert ``job`` (and log its ``create``) unless its uuid exists; returns (stored, created)."""

    def append_event(
        self, record: EventRecord, *, expected_revision: int, job_source: str | None = None
    ) -> AppendResult:
        """Log ``record`` (seq = expected_revision + 1) and apply it to the job, or say why not.

        ``job_source`` is the job's ``_properties.source`` from its head: a job this manager created
        has had a log from its start, so the store need not look for history to copy into it.

        Applying sets ``state``, ``last_event``, ``updated``, ``_properties.modified_date`` and
        ``_properties.revision`` = ``record.seq``, and appends the history entry to the window.
        """

    def log_unlogged_jobs(self) -> int:
        """Copy into the log the history of jobs created before there was one (`db init`); how many."""

    def record_stale(self, record: EventRecord) -> AppendResult:
        """Log a stale record (the job is not changed); REPLAYED if its delivery id is known."""

    def find_delivery(self, uuid: str, event_id: str) -> EventRecord | None:
        """The record a delivery id made on this job, if any."""

    def history(self, uuid: str, *, after: str | None = None, limit: int = 100) -> HistoryPage:
        """The job's full history, oldest first, a page at a time (imported entries first)."""

    def hide_job(self, uuid: str, *, now: datetime, audit: Document) -> Document | None:
        """Set ``_visible: false`` on a visible job; None when missing or already hidden."""

    def remove_job(self, uuid: str, *, expected_revision: int, tombstone: Document) -> bool:
        """Write ``tombstone`` to ``updates``, set the job's log aside and delete the job, all or nothing.

        False when the job changed (revision) or vanished; nothing is written then.
        """

    def audit_trail(self, uuid: str) -> list[Document]:
        """The job's ``updates`` records (create, hide, tombstones), oldest first."""

    def close(self) -> None: ...

    # -- watch: deadlines, heartbeats, retention (issue 10) ----------------------------------
    # A job's watch record lives apart from its datacatalog document (collection/table
    # ``watch``, one per job uuid): {uuid, pipeline_uuid, state, revision, since, last_seen,
    # due_at, deadlines, logged_at}. ``due_at`` (indexed) is when the job next needs judging.
    def watch_record(self, uuid: str) -> Document | None:
        """The job's watch record, or None."""

    def put_watch(self, record: Document) -> bool:
        """Insert or replace the record unless the stored one has a newer ``revision``; True if written."""

    def enter_state(self, uuid: str, *, state: str, revision: int, now: datetime, deadlines: tuple[str, ...]) -> bool:
        """Move an existing, older watch record to ``state`` entered at ``now``, in one write.

        ``due_at`` becomes ``now`` plus the smallest of the record's ``effective`` deadlines named
        in ``deadlines`` (None when none applies). False when there is no record or a newer one.
        """

    def touch_watch(self, uuid: str, *, revision: int, changes: Document, logged_at: Any = ANY_LOGGED) -> bool:
        """Set ``changes`` on the record if it is still at ``revision`` (and, when given, still has
        ``logged_at``): the compare-and-set heartbeats and the watchdog's rescheduling use."""

    def due_watches(self, now: datetime, *, limit: int) -> list[Document]:
        """Watch records whose ``due_at`` has come, earliest first (an index range, never a scan)."""

    def forget_watch(self, uuid: str) -> None: ...

    def retention_candidates(
        self, *, states: list[str], before: datetime, hidden_before: datetime | None, limit: int
    ) -> list[Document]:
        """Heads (uuid, pipeline_uuid, state, updated, _visible, _properties.revision, _admin) of jobs in
        ``states`` not updated since ``before``, and of hidden jobs not updated since ``hidden_before``."""

    def purge_job(self, uuid: str, *, expected_revision: int, tombstone: Document) -> bool:
        """Write ``tombstone``, delete the job, its log and its watch record, all or nothing;
        False (nothing written) when the job changed or vanished."""

    def expire_tombstones(self, now: datetime, *, dry_run: bool = False) -> int:
        """Delete (or count) purge tombstones whose ``expires_at`` has passed."""

    # -- job counts (issue 20); the read side is in ReadStore -----------------------------------
    def count_move(self, pipeline_uuid: str | None, from_state: str, to_state: str) -> None:
        """An event the caller appended (APPLIED) moved a visible job from ``from_state`` to ``to_state``:
        move the job counters if this store's event write did not (MongoDB); best effort, never raises."""


def iter_history(store: JobStore, uuid: str, page_size: int = 500) -> Iterator[EventRecord]:
    """Every record of a job's history, oldest first, read a page at a time."""
    after: str | None = None
    while True:
        page = store.history(uuid, after=after, limit=page_size)
        yield from page.records
        if page.next is None:
            return
        after = page.next


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


# -- read side (issue 11: the read API and metrics) ------------------------------------------
#: What a job list shows of each job: never ``data``, ``history``, ``_admin`` or ``_salt``.
JOB_SUMMARY_FIELDS = (
    "uuid",
    "state",
    "pipeline_uuid",
    "archive_path",
    "archive_system",
    "session",
    "agent",
    "task",
    "child_of",
    "last_event",
    "created",
    "updated",
    "revision",
    "visible",
)


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


class ReadStore(Protocol):
    """The read side both stores add to :class:`JobStore` (serve's read API, metrics and readiness)."""

    def query_jobs(self, where: JobFilter, *, after: str | None = None, limit: int = 50) -> JobPage:
        """Job summaries (:data:`JOB_SUMMARY_FIELDS`) matching ``where``, by (created desc, uuid desc)."""

    def count_jobs(self, where: JobFilter) -> dict[str, int]:
        """How many jobs match ``where``, per state."""

    def job_totals(self) -> dict[tuple[str, str], int]:
        """Visible jobs per (state, pipeline uuid), counted now: one aggregate over the jobs (a recount's)."""

    def ping(self, timeout: float = 2.0) -> None:
        """Raise ``STORAGE_UNAVAILABLE`` unless the store answers a trivial read within ``timeout``."""

    # -- job counts (issue 20) -------------------------------------------------------------------
    def job_counts(self, timeout: float = 2.0) -> dict[tuple[str, str], int]:
        """Visible jobs per (state, pipeline uuid) as the counters kept with every write have them (pairs
        that went back to 0 included): a small read, never a scan; ``STORAGE_UNAVAILABLE`` after ``timeout``."""

    def recount_jobs(self, *, settle: float | None = None) -> Recount:
        """Count the visible jobs (:meth:`job_totals`) and set the counters to it, unless they moved meanwhile
        (or within ``settle`` seconds after the count: a job updated but whose counters' move is in flight)."""


# -- job counts (issue 20): visible jobs per (state, pipeline), kept with the writes that move a job ---
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
