"""What the business code needs of storage, and nothing more: the one contract both stores declare.

The record of truth is an append-only event log (``records.py``); the job document is a bounded
summary python-datacatalog readers understand. The types the contract names live beside it:
``records.py`` (the log), ``listing.py`` (the job list) and ``outbox.py`` (notifications).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from .listing import JobFilter, JobPage, Recount
from .records import ANY_LOGGED, AppendResult, Document, EventRecord, HistoryPage

if TYPE_CHECKING:  # built only by the dispatcher's paths (store/outbox.py): the event path never needs them
    from .outbox import EventFate, OutboxItem, Settled


class JobStore(Protocol):
    """The one storage contract: everything the business code, the passes, notifications, serve's read
    API and the CLI need of a store. ``MongoJobStore`` and ``SqliteJobStore`` declare it (so mypy checks
    each against it), and ``tests/test_store_contract.py`` runs every method on both.

    Each store is a context manager and safe to share between threads.
    """

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

    # -- watch: deadlines, heartbeats, retention ----------------------------------
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

    # -- job counts --------------------------------------------------------------------------------
    def count_move(self, pipeline_uuid: str | None, from_state: str, to_state: str) -> None:
        """An event the caller appended (APPLIED) moved a visible job from ``from_state`` to ``to_state``:
        move the job counters if this store's event write did not (MongoDB); best effort, never raises."""

    def job_counts(self, timeout: float = 2.0) -> dict[tuple[str, str], int]:
        """Visible jobs per (state, pipeline uuid) as the counters kept with every write have them (pairs
        that went back to 0 included): a small read, never a scan; ``STORAGE_UNAVAILABLE`` after ``timeout``."""

    def recount_jobs(self, *, settle: float | None = None, wait: Callable[[float], Any] = time.sleep) -> Recount:
        """Count the visible jobs (:meth:`job_totals`) and set the counters to it, unless they moved meanwhile
        (or within ``settle`` seconds after the count: a job updated but whose counters' move is in flight).

        ``wait`` waits out the settle; one that returns True (``threading.Event.wait`` of a stopping
        server) abandons the recount, not applied."""

    # -- workflow engines' reports ------------------------------------------------------------------
    def set_progress(self, uuid: str, changes: Document) -> bool:
        """Set fields of the job document's ``progress`` summary (a None value removes one), each named by
        its dotted path under ``progress`` (see :func:`.records.progress_path`). State, revision,
        ``updated`` and history are not changed. False when there is no such job."""

    def record_task(self, record: EventRecord, progress: Document) -> AppendResult:
        """Log a task record (outcome ``task``, the job unchanged) and make its ``progress`` changes (as
        :meth:`set_progress`; none when empty) in one step: REPLAYED, changing nothing, when the record's
        delivery id is known. One transaction on SQLite; on MongoDB the record first, then the summary."""

    # -- read side: serve's read API, the web view and metrics ----------------------------
    def query_jobs(self, where: JobFilter, *, after: str | None = None, limit: int = 50) -> JobPage:
        """Job summaries (:data:`JOB_SUMMARY_FIELDS`) matching ``where``, by (created desc, uuid desc)."""

    def count_jobs(self, where: JobFilter) -> dict[str, int]:
        """How many jobs match ``where``, per state."""

    def job_totals(self) -> dict[tuple[str, str], int]:
        """Visible jobs per (state, pipeline uuid), counted now: one aggregate over the jobs (a recount's)."""

    def ping(self, timeout: float = 2.0) -> None:
        """Raise ``STORAGE_UNAVAILABLE`` unless the store answers a trivial read within ``timeout``."""

    def waiting_for_server(self) -> bool:
        """True while a networked store has not yet reached a server it can write to (the CLI says so)."""

    # -- notifications: subscriptions, the outbox, delivery records ---------------------------
    def save_subscription(self, subscription: Document) -> None: ...

    def list_subscriptions(self) -> list[Document]: ...

    def find_subscription(self, subscription_id: str) -> Document | None: ...

    def delete_subscription(self, subscription_id: str) -> bool: ...

    def claim_notifications(self, now: datetime, *, until: datetime, owner: str, limit: int) -> list[OutboxItem]:
        """Lease up to ``limit`` due outbox items to dispatcher ``owner`` until ``until`` and return them.

        While the lease lasts no other dispatcher is given them; a crashed holder's lease runs out.
        Both stores lease the whole outbox to one dispatcher at a time (one small row or document,
        renewed by its holder once half of it has passed), so delivering costs no write per item
        before the settlement.
        """

    def settle_notifications(self, owner: str, settled: list[Settled], deliveries: list[Document]) -> int:
        """Record ``deliveries`` and, for each item ``owner`` still holds, leave its ``pending``
        (none: the item is done) due at ``due``; how many items were settled."""

    def release_notifications(self, owner: str) -> None:
        """Give up what ``owner`` holds (a dispatcher stopping), so another need not wait for the lease to run out."""

    def event_fates(
        self, items: list[OutboxItem], *, now: datetime, grace_seconds: float
    ) -> list[tuple[EventFate, str | None]]:
        """For each item: whether its event is applied, and its job's pipeline uuid.

        On MongoDB a record logged but not applied after ``grace_seconds`` is rolled forward (its
        writer died between its two statements), as the job's next writer would.
        """

    def expire_deliveries(self, now: datetime) -> int:
        """Forget delivery records whose ``expires_at`` has passed (MongoDB's TTL index does it too)."""

    def list_deliveries(
        self, *, job_uuid: str | None = None, subscription: str | None = None, limit: int = 100
    ) -> list[Document]:
        """Delivery attempts, newest first."""


def iter_history(store: JobStore, uuid: str, page_size: int = 500) -> Iterator[EventRecord]:
    """Every record of a job's history, oldest first, read a page at a time."""
    after: str | None = None
    while True:
        page = store.history(uuid, after=after, limit=page_size)
        yield from page.records
        if page.next is None:
            return
        after = page.next
