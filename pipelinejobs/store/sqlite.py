"""The embedded backend: one SQLite file, for running without a MongoDB.

It keeps the documents the MongoDB backend keeps (compat §1, §4) and the same
event log, as rows. A job's row holds its document as JSON text, written once
at creation, plus the columns that change (state, last event, time, revision,
visibility); an event is one ``events`` row and an ``UPDATE`` of those columns
in one ``BEGIN IMMEDIATE`` transaction, so its cost never grows with the job's
history. Reading a job puts the document back together, its ``history`` being
the latest log rows. ``BEGIN IMMEDIATE`` takes the file's write lock up front, so
reactor processes sharing the file serialise instead of losing events. Writers
of this package first take an exclusive ``flock`` on ``<file>-lock``: a waiting
process sleeps in the kernel and wakes the moment the lock is free, where SQLite's
busy handler polls with sleeps of 1 to 100 ms (serve's worker processes share a
file under load). The busy timeout still covers writers that don't take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ErrorKind, PipelineJobsError
from .files import private_store_file
from .listing import (
    JOB_SUMMARY_FIELDS,
    JOB_SUMMARY_PATHS,
    JobFilter,
    JobPage,
    Recount,
    count_corrections,
    job_summary,
    page_of_jobs,
    parse_job_cursor,
)
from .records import (
    ANY_LOGGED,
    DEFAULT_HISTORY_WINDOW,
    DEFAULT_INLINE_DATA_BYTES,
    Append,
    AppendResult,
    Document,
    EventRecord,
    HistoryPage,
    Outcome,
    creation_record,
    imported_record,
    page_of,
    parse_cursor,
    progress_path,
    removed_key,
    unlogged_history,
)
from .shared import SharedStore

if TYPE_CHECKING:
    from .outbox import EventFate, OutboxItem, Settled

_IDLE_READERS = 8  # read connections kept open between reads
DEFAULT_BUSY_TIMEOUT = 30.0  # seconds a writer waits for the file's lock before giving up
SCHEMA_VERSION = 5  # 3: notifications (outbox, subscriptions, deliveries); 4: one lease on the outbox; 5: job_counts
_DATE = "$date"  # JSON tag of a datetime
_LITERAL = "$literal"  # JSON tag of a stored dict that would otherwise look like a tag
_TAGS = frozenset({_DATE, _LITERAL})
#: log outcomes that are history entries (a stale callback is in the log, not in the job's history)
_ENTRY_OUTCOMES = (Outcome.APPLIED.value, Outcome.IMPORTED.value)

#: fields of the job document written once at creation that the read API filters and orders on
_CREATED = """json_extract(doc, '$._properties.created_date."$date"')"""  # ISO 8601 UTC text: sorts as time
_SESSION = "json_extract(doc, '$.session')"
_ARCHIVE_PATH = "json_extract(doc, '$.archive_path')"

# -- job counts: visible jobs per (state, pipeline), kept by triggers in the writing transaction --
#: '' stands for a null state or pipeline (a key column cannot be null); read back as "None", as str() shows it
_COUNT_KEY = "IFNULL({row}.state, ''), IFNULL({row}.pipeline_uuid, '')"
_COUNT_IN = (
    "INSERT INTO job_counts (state, pipeline, n) SELECT {key}, 1 WHERE {when}"
    " ON CONFLICT (state, pipeline) DO UPDATE SET n = n + 1;"
)
_COUNT_OUT = "UPDATE job_counts SET n = n - 1 WHERE {when} AND (state, pipeline) = ({key});"
_JOB_COUNTS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS job_counts (
        state TEXT NOT NULL,
        pipeline TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (state, pipeline)
    ) WITHOUT ROWID""",
    "CREATE TRIGGER IF NOT EXISTS jobs_count_insert AFTER INSERT ON jobs BEGIN "
    + _COUNT_IN.format(key=_COUNT_KEY.format(row="NEW"), when="NEW.visible = 1")
    + " END",
    "CREATE TRIGGER IF NOT EXISTS jobs_count_delete AFTER DELETE ON jobs BEGIN "
    + _COUNT_OUT.format(key=_COUNT_KEY.format(row="OLD"), when="OLD.visible = 1")
    + " END",
    # fires only when a statement assigns one of these columns (an event that keeps the state does not)
    "CREATE TRIGGER IF NOT EXISTS jobs_count_update AFTER UPDATE OF state, visible, pipeline_uuid ON jobs"
    " WHEN OLD.state IS NOT NEW.state OR OLD.visible IS NOT NEW.visible OR OLD.pipeline_uuid IS NOT NEW.pipeline_uuid"
    " BEGIN "
    + _COUNT_OUT.format(key=_COUNT_KEY.format(row="OLD"), when="OLD.visible = 1")
    + _COUNT_IN.format(key=_COUNT_KEY.format(row="NEW"), when="NEW.visible = 1")
    + " END",
    # a file of an earlier version: its jobs counted once (afterwards the triggers keep the counts)
    f"""INSERT INTO job_counts (state, pipeline, n)
        SELECT {_COUNT_KEY.format(row="jobs")}, COUNT(*) FROM jobs
        WHERE visible = 1 AND NOT EXISTS (SELECT 1 FROM job_counts) GROUP BY 1, 2""",
)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        uuid TEXT NOT NULL UNIQUE,
        state TEXT,
        pipeline_uuid TEXT,
        visible INTEGER NOT NULL,
        updated REAL,
        doc TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state)",
    "CREATE INDEX IF NOT EXISTS jobs_pipeline_uuid ON jobs (pipeline_uuid)",
    "CREATE INDEX IF NOT EXISTS jobs_updated ON jobs (updated)",
    """CREATE TABLE IF NOT EXISTS pipelines (
        uuid TEXT NOT NULL UNIQUE,
        id TEXT UNIQUE,
        doc TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS updates (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        uuid TEXT,
        action TEXT,
        doc TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS updates_uuid ON updates (uuid)",
    """CREATE TABLE IF NOT EXISTS events (
        uuid TEXT NOT NULL,
        seq INTEGER NOT NULL,
        slot TEXT NOT NULL,
        event_id TEXT,
        outcome TEXT NOT NULL,
        record TEXT NOT NULL,
        UNIQUE (uuid, seq, slot),
        UNIQUE (uuid, event_id)
    )""",
    # -- watch: deadlines, heartbeats, retention --
    """CREATE TABLE IF NOT EXISTS watch (
        uuid TEXT NOT NULL UNIQUE,
        revision INTEGER NOT NULL,
        due_at REAL,
        logged_at REAL,
        doc TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS watch_due_at ON watch (due_at) WHERE due_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS jobs_state_updated ON jobs (state, updated)",
    "CREATE INDEX IF NOT EXISTS jobs_hidden_updated ON jobs (updated) WHERE visible = 0",
    "CREATE INDEX IF NOT EXISTS updates_action ON updates (action)",
    # -- the read API: an index per list filter, each ending in the list's order --
    f"CREATE INDEX IF NOT EXISTS jobs_created ON jobs ({_CREATED} DESC, uuid DESC)",
    f"CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (state, {_CREATED} DESC, uuid DESC)",
    f"CREATE INDEX IF NOT EXISTS jobs_pipeline_created ON jobs (pipeline_uuid, {_CREATED} DESC, uuid DESC)",
    f"CREATE INDEX IF NOT EXISTS jobs_session_created ON jobs ({_SESSION}, {_CREATED} DESC, uuid DESC)",
    f"CREATE INDEX IF NOT EXISTS jobs_archive_path ON jobs ({_ARCHIVE_PATH})",
    "CREATE INDEX IF NOT EXISTS jobs_state_pipeline ON jobs (state, pipeline_uuid, visible)",
    # a job's parents (its child_of array) as rows, kept by triggers, so "children of X" is an index lookup
    """CREATE TABLE IF NOT EXISTS job_parents (
        parent TEXT NOT NULL,
        uuid TEXT NOT NULL,
        PRIMARY KEY (parent, uuid)
    ) WITHOUT ROWID""",
    """CREATE TRIGGER IF NOT EXISTS jobs_parents_insert AFTER INSERT ON jobs BEGIN
        INSERT OR IGNORE INTO job_parents (parent, uuid)
            SELECT value, NEW.uuid FROM json_each(NEW.doc, '$.child_of') WHERE type = 'text';
    END""",
    """CREATE TRIGGER IF NOT EXISTS jobs_parents_delete AFTER DELETE ON jobs BEGIN
        DELETE FROM job_parents WHERE uuid = OLD.uuid;
    END""",
    # -- notifications: an outbox row is written in its event's transaction --
    """CREATE TABLE IF NOT EXISTS outbox (
        uuid TEXT NOT NULL,
        seq INTEGER NOT NULL,
        slot TEXT NOT NULL,
        pending TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        due REAL NOT NULL,
        lease TEXT,
        PRIMARY KEY (uuid, seq, slot)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS outbox_due ON outbox (due)",
    # one dispatcher at a time holds the outbox, until its lease runs out (outbox.lease is unused since)
    """CREATE TABLE IF NOT EXISTS notify_lease (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        until REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS subscriptions (
        id TEXT PRIMARY KEY,
        created REAL,
        doc TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_uuid TEXT,
        subscription TEXT,
        expires_at REAL,
        doc TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries (job_uuid, seq)",
    "CREATE INDEX IF NOT EXISTS deliveries_subscription ON deliveries (subscription, seq)",
    "CREATE INDEX IF NOT EXISTS deliveries_expires ON deliveries (expires_at) WHERE expires_at IS NOT NULL",
    # jobs written before the table existed (runs once: afterwards the table is not empty)
    """INSERT OR IGNORE INTO job_parents (parent, uuid)
        SELECT p.value, jobs.uuid FROM jobs, json_each(jobs.doc, '$.child_of') AS p
        WHERE p.type = 'text' AND NOT EXISTS (SELECT 1 FROM job_parents)""",
    *_JOB_COUNTS_SCHEMA,
)
#: version 1 files kept each job's whole history in its document; these columns take over what changes
_MIGRATE_TO_2 = (
    "ALTER TABLE jobs ADD COLUMN last_event TEXT",
    "ALTER TABLE jobs ADD COLUMN revision INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN logged INTEGER NOT NULL DEFAULT 0",
    "UPDATE jobs SET last_event = json_extract(doc, '$.last_event'),"
    " revision = COALESCE(json_extract(doc, '$._properties.revision'), 0)",
)
_NEW_COLUMNS = {"last_event", "revision", "logged"}


# -- locations -------------------------------------------------------------------------------
def default_sqlite_path(env: Mapping[str, str]) -> Path:
    """``$XDG_DATA_HOME/pipelinejobs/pipelinejobs.sqlite3``, else under ``~/.local/share``."""
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative values
        base = Path(xdg)
    else:
        home = env.get("HOME")
        base = (Path(home) if home else Path.home()) / ".local" / "share"
    return base / "pipelinejobs" / "pipelinejobs.sqlite3"


def sqlite_path(configured: Any, env: Mapping[str, str]) -> Path:
    """The configured path (``~`` means ``$HOME``), or the default when none is set."""
    if not configured:
        return default_sqlite_path(env)
    text = str(configured)
    if (text == "~" or text.startswith("~/")) and env.get("HOME"):
        text = env["HOME"] + text[1:]
    return Path(text)


# -- documents as JSON -----------------------------------------------------------------------
def _utc(moment: datetime) -> datetime:
    # naive datetimes are taken as UTC, as BSON does
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


_SCALARS = frozenset({str, int, float, bool, type(None)})  # JSON as they are: no call to _tagged


def _tagged(value: Any) -> Any:
    """``value`` with datetimes replaced by ``{"$date": iso}``; dict key order is kept."""
    if isinstance(value, datetime):
        return {_DATE: _utc(value).isoformat()}
    if isinstance(value, dict):
        plain = {str(key): item if type(item) in _SCALARS else _tagged(item) for key, item in value.items()}
        if len(plain) == 1 and next(iter(plain)) in _TAGS:  # a stored dict that looks like a tag:
            return {_LITERAL: list(plain.items())}  # kept as pairs, which the decoder never untags
        return plain
    if isinstance(value, (list, tuple)):
        return [item if type(item) in _SCALARS else _tagged(item) for item in value]
    return value


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if _DATE in obj and isinstance(obj[_DATE], str):
            return datetime.fromisoformat(obj[_DATE]).astimezone(timezone.utc)
        if _LITERAL in obj and isinstance(obj[_LITERAL], list):
            return dict(obj[_LITERAL])
    return obj


def dumps_document(doc: Mapping[str, Any]) -> str:
    """A document as the JSON text stored in a ``doc`` column."""
    return json.dumps(_tagged(dict(doc)), ensure_ascii=False, separators=(",", ":"))


def loads_document(text: str) -> Document:
    """The stored JSON text back as a document, with timezone-aware UTC datetimes."""
    return json.loads(text, object_hook=_untag)


def _column(value: Any) -> str | int | float | None:
    """A document value as an indexable column; structured values are not filterable."""
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def _timestamp(value: Any) -> float | None:
    return _utc(value).timestamp() if isinstance(value, datetime) else None


def _moment(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def _record_row(record: EventRecord) -> tuple[Any, ...]:
    return (
        record.uuid,
        record.seq,
        record.slot,
        record.event_id,
        record.outcome.value,
        dumps_document(record.to_document()),
    )


#: a job's head (store.base.HEAD_FIELDS but the salt) as columns, in the order _head takes them
_HEAD_COLUMNS = "state, pipeline_uuid, updated, visible, revision, json_extract(doc, '$._admin')"


def _head(uuid: str, state: Any, pipeline_uuid: Any, updated: Any, visible: Any, revision: Any, admin: Any) -> Document:
    return {
        "uuid": uuid,
        "state": state,
        "pipeline_uuid": pipeline_uuid,
        "updated": _moment(updated),
        "_visible": bool(visible),
        "_properties": {"revision": revision},
        "_admin": loads_document(admin) if admin else None,
    }


def _log(conn: sqlite3.Connection, *records: EventRecord, ignore_taken: bool = False) -> None:
    """Append log rows; a taken (uuid, seq, slot) or delivery id raises IntegrityError unless ``ignore_taken``."""
    _log_rows(conn, [_record_row(record) for record in records], ignore_taken=ignore_taken)


def _log_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], *, ignore_taken: bool = False) -> None:
    verb = "INSERT OR IGNORE" if ignore_taken else "INSERT"
    conn.executemany(f"{verb} INTO events (uuid, seq, slot, event_id, outcome, record) VALUES (?, ?, ?, ?, ?, ?)", rows)


#: an event that leaves the state as it was does not assign it: SQLite rewrites the entries of every
#: index on an assigned column (four hold `state`), and each rewritten page is one more to write and sync
_ADVANCE_SAME_STATE = (
    "UPDATE jobs SET last_event = ?, updated = ?, revision = ?"
    " WHERE uuid = ? AND revision = ? AND visible = 1 AND logged = 1 AND state = ?"
)
_ADVANCE = (
    "UPDATE jobs SET last_event = ?, updated = ?, revision = ?, state = ?"
    " WHERE uuid = ? AND revision = ? AND visible = 1 AND logged = 1"
)


def _advance(conn: sqlite3.Connection, record: EventRecord, expected_revision: int) -> bool:
    """Move the visible, logged job from ``expected_revision`` to the record's; False if it is not there."""
    moved = (record.name, _timestamp(record.date), record.seq)
    if conn.execute(_ADVANCE_SAME_STATE, (*moved, record.uuid, expected_revision, record.state)).rowcount:
        return True
    return bool(conn.execute(_ADVANCE, (*moved, record.state, record.uuid, expected_revision)).rowcount)


def _outbox_key(settled: Settled) -> tuple[str, int, str]:
    """The outbox row of a settled item."""
    return (settled.item.uuid, settled.item.seq, settled.item.slot)


def _record(text: str) -> EventRecord:
    return EventRecord.from_document(loads_document(text))


# -- the store -------------------------------------------------------------------------------
class SqliteJobStore(SharedStore):
    """:class:`~pipelinejobs.store.base.JobStore` on one SQLite file, safe across processes and threads."""

    backend = "sqlite"
    local = True

    def __init__(
        self,
        path: str | Path,
        *,
        timeout: float = DEFAULT_BUSY_TIMEOUT,
        history_window: int = DEFAULT_HISTORY_WINDOW,
        inline_data_bytes: int = DEFAULT_INLINE_DATA_BYTES,
    ) -> None:
        self.path = Path(path)
        self.history_window = max(history_window, 1)
        self.inline_data_bytes = inline_data_bytes
        self._timeout = timeout
        self._lock = threading.Lock()  # one write connection; writing threads take turns (no busy-wait sleeps)
        self._conn: sqlite3.Connection | None = None
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()  # idle read connections
        self._writer_lock: int | None = None  # the ``<file>-lock`` descriptor processes take turns on
        self._held: dict[str, tuple[datetime, datetime]] = {}  # dispatcher -> (outbox lease taken at, until)
        with self._translate_errors():
            private_store_file(self.path)  # 0600 in a 0700 directory: it holds salts, nonces, webhook secrets
            self._writer_lock = os.open(f"{self.path}-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            try:
                self._conn = conn
                if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                    # WAL lets readers go on while one process writes; the mode is stored in the file
                    conn.execute("PRAGMA journal_mode=WAL")
                    self._create_schema()
                conn.execute("PRAGMA synchronous=FULL")  # a committed event survives a power cut
            except BaseException:
                self._conn = None
                conn.close()
                os.close(self._writer_lock)
                self._writer_lock = None
                raise

    def __enter__(self) -> SqliteJobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        return f"sqlite file {self.path}"

    # -- helpers ---------------------------------------------------------
    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        """Turn driver and file-system failures into one clear error."""
        try:
            yield
        except sqlite3.DatabaseError as exc:  # locked, unreadable, not a database, disk full...
            raise PipelineJobsError(
                ErrorKind.STORAGE_UNAVAILABLE,
                f"the SQLite store {self.path} cannot be used ({exc}); nothing was changed",
            ) from exc
        except OSError as exc:  # the directory cannot be created
            raise PipelineJobsError(
                ErrorKind.STORAGE_UNAVAILABLE,
                f"the SQLite store {self.path} cannot be created ({exc.strerror or exc}); nothing was changed",
            ) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise PipelineJobsError(ErrorKind.INTERNAL, f"the SQLite store {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the file's write lock from its start; all or nothing."""
        with self._lock, self._translate_errors():
            conn = self._connection()
            assert self._writer_lock is not None  # open while the connection is
            fcntl.flock(self._writer_lock, fcntl.LOCK_EX)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    if conn.in_transaction:  # the work may have rolled back on purpose
                        conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                fcntl.flock(self._writer_lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A read connection of its own: under WAL, reads go on while another thread commits."""
        with self._translate_errors():
            self._connection()  # refuses once closed
            try:
                conn = self._readers.get_nowait()
            except queue.Empty:
                conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
            try:
                yield conn
            finally:
                if self._conn is None or self._readers.qsize() >= _IDLE_READERS:
                    conn.close()
                else:
                    self._readers.put(conn)

    def _create_schema(self) -> None:
        with self._transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            if not columns >= _NEW_COLUMNS:
                for statement in _MIGRATE_TO_2:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _audit(conn: sqlite3.Connection, record: Document) -> None:
        conn.execute(
            "INSERT INTO updates (uuid, action, doc) VALUES (?, ?, ?)",
            (_column(record.get("uuid")), _column(record.get("action")), dumps_document(record)),
        )

    _JOB_COLUMNS = "uuid, state, visible, updated, last_event, revision, logged, doc"

    def _assemble(self, conn: sqlite3.Connection, row: tuple[Any, ...], *, history: bool = True) -> Document:
        """A job document from its row: the stored document with the changing fields from their columns."""
        uuid, state, visible, updated, last_event, revision, logged, text = row
        doc = loads_document(text)
        doc["state"] = state
        doc["last_event"] = last_event if last_event is not None else doc.get("last_event")
        doc["updated"] = _moment(updated)
        doc["_visible"] = bool(visible)
        properties = doc.setdefault("_properties", {})
        properties["modified_date"] = doc["updated"]
        properties["revision"] = revision
        if not history:
            doc.pop("history", None)
        elif logged:
            doc["history"] = self._window(conn, uuid)
        return doc

    def _window(self, conn: sqlite3.Connection, uuid: str) -> list[Document]:
        rows = conn.execute(
            "SELECT record FROM events WHERE uuid = ? AND outcome IN (?, ?) ORDER BY seq DESC, slot DESC LIMIT ?",
            (uuid, *_ENTRY_OUTCOMES, self.history_window),
        ).fetchall()
        return [_record(text).history_entry(self.inline_data_bytes) for (text,) in reversed(rows)]

    def _import_history(self, conn: sqlite3.Connection, uuid: str) -> None:
        """Move a version-1 job's embedded history into the log (its first logged event does this)."""
        row = conn.execute("SELECT doc FROM jobs WHERE uuid = ? AND logged = 0", (uuid,)).fetchone()
        if row is None:
            return
        doc = loads_document(row[0])
        records = [imported_record(uuid, i, entry) for i, entry in enumerate(doc.get("history") or [])]
        _log(conn, *records, ignore_taken=True)
        doc["history"] = []
        conn.execute("UPDATE jobs SET logged = 1, doc = ? WHERE uuid = ?", (dumps_document(doc), uuid))

    # -- protocol --------------------------------------------------------
    def ensure_indexes(self) -> None:
        self._create_schema()

    def missing_indexes(self) -> list[str]:
        with self._reading() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        return [] if version == SCHEMA_VERSION else [f"schema version {SCHEMA_VERSION}"]

    def find_pipeline(self, uuid: str) -> Document | None:
        with self._reading() as conn:
            row = conn.execute("SELECT doc FROM pipelines WHERE uuid = ?", (uuid,)).fetchone()
        return loads_document(row[0]) if row else None

    def save_pipeline(self, pipeline: Document) -> tuple[Document, bool]:
        with self._transaction() as conn:
            try:
                conn.execute(
                    "INSERT INTO pipelines (uuid, id, doc) VALUES (?, ?, ?)",
                    (pipeline["uuid"], _column(pipeline.get("id")), dumps_document(pipeline)),
                )
                return dict(pipeline), True
            except sqlite3.IntegrityError:  # uuid or id taken: the uuid's holder, else the id's
                row = conn.execute(
                    "SELECT doc FROM pipelines WHERE uuid = ? OR id = ? ORDER BY uuid = ? DESC LIMIT 1",
                    (pipeline["uuid"], _column(pipeline.get("id")), pipeline["uuid"]),
                ).fetchone()
                return (loads_document(row[0]) if row else dict(pipeline)), False

    def list_pipelines(self) -> list[Document]:
        with self._reading() as conn:
            rows = conn.execute("SELECT doc FROM pipelines ORDER BY id").fetchall()
        return [loads_document(text) for (text,) in rows]

    def find_head(self, uuid: str) -> Document | None:
        with self._reading() as conn:
            row = conn.execute(
                f"SELECT {_HEAD_COLUMNS}, json_extract(doc, '$._salt') FROM jobs WHERE uuid = ?",
                (uuid,),
            ).fetchone()
        if row is None:
            return None
        *head, salt = row
        return {**_head(uuid, *head), "_salt": salt}

    def find_job(self, uuid: str) -> Document | None:
        with self._reading() as conn:
            row = conn.execute(f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE uuid = ?", (uuid,)).fetchone()
            return self._assemble(conn, row) if row else None

    def list_jobs(
        self,
        *,
        state: str | None = None,
        pipeline_uuid: str | None = None,
        include_hidden: bool = False,
        limit: int = 100,
    ) -> list[Document]:
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if state:
            where.append("state = ?")
            params.append(state)
        if pipeline_uuid:
            where.append("pipeline_uuid = ?")
            params.append(pipeline_uuid)
        if not include_hidden:
            where.append("visible = 1")
        params.append(abs(limit) or -1)  # as in Mongo, a limit of 0 means none (-1 to SQLite)
        # rowid breaks ties in insertion order, as Mongo's natural order does
        sql = f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY updated DESC, rowid LIMIT ?"
        with self._reading() as conn:
            rows = conn.execute(sql, tuple(params)).fetchall()
            return [self._assemble(conn, row, history=False) for row in rows]

    def insert_job(self, job: Document, audit: Document) -> tuple[Document, bool]:
        with self._transaction() as conn:
            row = conn.execute(f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE uuid = ?", (job["uuid"],)).fetchone()
            if row is not None:  # never overwrite: a repeated create gets the stored job
                return self._assemble(conn, row), False
            stored = {**job, "history": []}  # the history lives in the log from the start
            conn.execute(
                "INSERT INTO jobs (uuid, state, pipeline_uuid, visible, updated, last_event, revision, logged, doc)"
                " VALUES (?, ?, ?, 1, ?, ?, ?, 1, ?)",
                (
                    job["uuid"],
                    _column(job.get("state")),
                    _column(job.get("pipeline_uuid")),
                    _timestamp(job.get("updated")),
                    job.get("last_event"),
                    (job.get("_properties") or {}).get("revision", 0),
                    dumps_document(stored),
                ),
            )
            created = creation_record(job)
            _log(conn, created)
            self._audit(conn, audit)
            return job, True

    def log_unlogged_jobs(self) -> int:
        """Nothing to do: a job of an earlier file version logs its history at its first event."""
        return 0

    def append_event(
        self, record: EventRecord, *, expected_revision: int, job_source: str | None = None
    ) -> AppendResult:
        row = _record_row(record)  # serialized before the write lock is taken, not while others wait for it
        with self._transaction() as conn:
            if not _advance(conn, record, expected_revision):
                self._import_history(conn, record.uuid)  # a version-1 job: log its history first
                if not _advance(conn, record, expected_revision):
                    return AppendResult(Append.MOVED)
            try:
                _log_rows(conn, [row])
            except sqlite3.IntegrityError:
                existing = self._delivery(conn, record.uuid, record.event_id)
                conn.execute("ROLLBACK")  # the job's update goes too
                return AppendResult(Append.REPLAYED, existing) if existing else AppendResult(Append.MOVED)
            if record.notify:  # the outbox row commits with the event, or neither does
                conn.execute(
                    "INSERT INTO outbox (uuid, seq, slot, pending, attempts, due) VALUES (?, ?, ?, ?, 0, ?)",
                    (record.uuid, record.seq, record.slot, json.dumps(list(record.notify)), _timestamp(record.date)),
                )
            return AppendResult(Append.APPLIED)

    def record_stale(self, record: EventRecord) -> AppendResult:
        with self._transaction() as conn:
            try:
                _log(conn, record)
            except sqlite3.IntegrityError:
                existing = self._delivery(conn, record.uuid, record.event_id)
                if existing is None:
                    raise
                return AppendResult(Append.REPLAYED, existing)
            return AppendResult(Append.APPLIED)

    @staticmethod
    def _delivery(conn: sqlite3.Connection, uuid: str, event_id: str | None) -> EventRecord | None:
        if event_id is None:
            return None
        row = conn.execute("SELECT record FROM events WHERE uuid = ? AND event_id = ?", (uuid, event_id)).fetchone()
        return _record(row[0]) if row else None

    def find_delivery(self, uuid: str, event_id: str) -> EventRecord | None:
        with self._reading() as conn:
            return self._delivery(conn, uuid, event_id)

    def history(self, uuid: str, *, after: str | None = None, limit: int = 100) -> HistoryPage:
        position = parse_cursor(after)
        limit = max(1, limit)
        with self._reading() as conn:
            logged = conn.execute("SELECT logged, doc FROM jobs WHERE uuid = ?", (uuid,)).fetchone()
            if logged is not None and not logged[0]:  # a version-1 job no event has touched since
                return unlogged_history(uuid, loads_document(logged[1]).get("history"), position, limit)
            seq, slot = position if position is not None else (-2, "")
            found = conn.execute(
                "SELECT record FROM events WHERE uuid = ? AND (seq > ? OR (seq = ? AND slot > ?))"
                " ORDER BY seq, slot LIMIT ?",
                (uuid, seq, seq, slot, limit + 1),
            ).fetchall()
        return page_of([_record(text) for (text,) in found], limit)

    def hide_job(self, uuid: str, *, now: datetime, audit: Document) -> Document | None:
        with self._transaction() as conn:
            changed = conn.execute(
                "UPDATE jobs SET visible = 0, updated = ?, revision = revision + 1 WHERE uuid = ? AND visible = 1",
                (_timestamp(now), uuid),
            ).rowcount
            if changed == 0:
                return None
            self._audit(conn, audit)
        return self.find_head(uuid)

    def remove_job(self, uuid: str, *, expected_revision: int, tombstone: Document) -> bool:
        with self._transaction() as conn:
            row = conn.execute("SELECT revision FROM jobs WHERE uuid = ?", (uuid,)).fetchone()
            if row is None or row[0] != expected_revision:
                return False
            self._audit(conn, tombstone)
            # the log is kept, under a key a re-created job with the same uuid can never meet
            conn.execute("UPDATE events SET uuid = ? WHERE uuid = ?", (removed_key(uuid, tombstone), uuid))
            conn.execute("DELETE FROM jobs WHERE uuid = ?", (uuid,))
            return True

    def audit_trail(self, uuid: str) -> list[Document]:
        with self._reading() as conn:
            rows = conn.execute("SELECT doc FROM updates WHERE uuid = ? ORDER BY seq", (uuid,)).fetchall()
        return [loads_document(text) for (text,) in rows]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._writer_lock is not None:
                os.close(self._writer_lock)
                self._writer_lock = None
        with contextlib.suppress(queue.Empty):  # readers still out close theirs when they see _conn is None
            while True:
                self._readers.get_nowait().close()

    # -- watch: deadlines, heartbeats, retention ----------------------------------
    def watch_record(self, uuid: str) -> Document | None:
        with self._reading() as conn:
            row = conn.execute("SELECT doc FROM watch WHERE uuid = ?", (uuid,)).fetchone()
        return loads_document(row[0]) if row else None

    @staticmethod
    def _watch_row(record: Document) -> tuple[Any, ...]:
        return (
            record["uuid"],
            int(record.get("revision") or 0),
            _timestamp(record.get("due_at")),
            _timestamp(record.get("logged_at")),
            dumps_document(record),
        )

    def put_watch(self, record: Document) -> bool:
        with self._transaction() as conn:
            changed = conn.execute(
                "INSERT INTO watch (uuid, revision, due_at, logged_at, doc) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (uuid) DO UPDATE SET revision = excluded.revision, due_at = excluded.due_at,"
                " logged_at = excluded.logged_at, doc = excluded.doc WHERE excluded.revision > watch.revision",
                self._watch_row(record),
            ).rowcount
        return changed == 1

    def enter_state(self, uuid: str, *, state: str, revision: int, now: datetime, deadlines: tuple[str, ...]) -> bool:
        with self._transaction() as conn:
            row = conn.execute("SELECT revision, doc FROM watch WHERE uuid = ?", (uuid,)).fetchone()
            if row is None or row[0] >= revision:
                return False
            record = loads_document(row[1])
            effective = record.get("effective") or {}
            seconds = [effective[name] for name in deadlines if isinstance(effective.get(name), int)]
            due = now + timedelta(seconds=min(seconds)) if seconds else None
            record.update(state=state, revision=revision, since=now, last_seen=now, due_at=due)
            conn.execute(
                "UPDATE watch SET revision = ?, due_at = ?, doc = ? WHERE uuid = ?",
                (revision, _timestamp(due), dumps_document(record), uuid),
            )
            return True

    def touch_watch(self, uuid: str, *, revision: int, changes: Document, logged_at: Any = ANY_LOGGED) -> bool:
        with self._transaction() as conn:
            row = conn.execute("SELECT revision, logged_at, doc FROM watch WHERE uuid = ?", (uuid,)).fetchone()
            if row is None or row[0] != revision:
                return False
            if logged_at is not ANY_LOGGED and row[1] != _timestamp(logged_at):
                return False
            record = {**loads_document(row[2]), **changes}
            conn.execute(
                "UPDATE watch SET due_at = ?, logged_at = ?, doc = ? WHERE uuid = ?",
                (_timestamp(record.get("due_at")), _timestamp(record.get("logged_at")), dumps_document(record), uuid),
            )
            return True

    def due_watches(self, now: datetime, *, limit: int) -> list[Document]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT doc FROM watch WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at LIMIT ?",
                (_timestamp(now), max(1, limit)),
            ).fetchall()
        return [loads_document(text) for (text,) in rows]

    def forget_watch(self, uuid: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM watch WHERE uuid = ?", (uuid,))

    def _heads_in_state(self, state: str, before: datetime, limit: int) -> list[Document]:
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT uuid, {_HEAD_COLUMNS} FROM jobs WHERE state = ? AND updated < ? ORDER BY updated LIMIT ?",
                (state, _timestamp(before), limit),
            ).fetchall()
        return [_head(*row) for row in rows]

    def _hidden_heads(self, before: datetime, limit: int) -> list[Document]:
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT uuid, {_HEAD_COLUMNS} FROM jobs WHERE visible = 0 AND updated < ? ORDER BY updated LIMIT ?",
                (_timestamp(before), limit),
            ).fetchall()
        return [_head(*row) for row in rows]

    def purge_job(self, uuid: str, *, expected_revision: int, tombstone: Document) -> bool:
        with self._transaction() as conn:
            row = conn.execute("SELECT revision FROM jobs WHERE uuid = ?", (uuid,)).fetchone()
            if row is None or row[0] != expected_revision:
                return False
            self._audit(conn, tombstone)
            conn.execute("DELETE FROM events WHERE uuid = ?", (uuid,))
            conn.execute("DELETE FROM watch WHERE uuid = ?", (uuid,))
            conn.execute("DELETE FROM jobs WHERE uuid = ?", (uuid,))
            return True

    def expire_tombstones(self, now: datetime, *, dry_run: bool = False) -> int:
        # the embedded store has no TTL monitor: the pass does its work, over the purge tombstones only
        where = "action = 'purge' AND json_extract(doc, '$.expires_at.\"$date\"') <= ?"
        stamp = _utc(now).replace(microsecond=0).isoformat()
        with self._transaction() as conn:
            if dry_run:
                return int(conn.execute(f"SELECT COUNT(*) FROM updates WHERE {where}", (stamp,)).fetchone()[0])
            return conn.execute(f"DELETE FROM updates WHERE {where}", (stamp,)).rowcount

    # -- notifications: subscriptions, the outbox, delivery records ----------------
    def save_subscription(self, subscription: Document) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO subscriptions (id, created, doc) VALUES (?, ?, ?)",
                (subscription["id"], _timestamp(subscription.get("created")), dumps_document(subscription)),
            )

    def list_subscriptions(self) -> list[Document]:
        with self._reading() as conn:
            rows = conn.execute("SELECT doc FROM subscriptions ORDER BY created, id").fetchall()
        return [loads_document(text) for (text,) in rows]

    def find_subscription(self, subscription_id: str) -> Document | None:
        with self._reading() as conn:
            row = conn.execute("SELECT doc FROM subscriptions WHERE id = ?", (subscription_id,)).fetchone()
        return loads_document(row[0]) if row else None

    def delete_subscription(self, subscription_id: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM subscriptions WHERE id = ?", (subscription_id,)).rowcount == 1

    def _outbox_is_due(self, now: datetime) -> bool:
        with self._reading() as conn:
            return (
                conn.execute("SELECT 1 FROM outbox WHERE due <= ? LIMIT 1", (_timestamp(now),)).fetchone() is not None
            )

    def _take_outbox_lease(self, owner: str, now: datetime, until: datetime) -> bool:
        with self._transaction() as conn:
            return bool(
                conn.execute(
                    "INSERT INTO notify_lease (name, owner, until) VALUES ('outbox', ?, ?) ON CONFLICT (name)"
                    " DO UPDATE SET owner = excluded.owner, until = excluded.until"
                    " WHERE notify_lease.until < ? OR notify_lease.owner = excluded.owner",
                    (owner, _timestamp(until), _timestamp(now)),
                ).rowcount
            )

    def _due_outbox_items(self, now: datetime, limit: int) -> list[OutboxItem]:
        from .outbox import OutboxItem

        with self._reading() as conn:
            rows = conn.execute(
                "SELECT o.uuid, o.seq, o.slot, o.pending, o.attempts, o.due, e.record"
                " FROM (SELECT * FROM outbox WHERE due <= ? ORDER BY due LIMIT ?) AS o"
                " LEFT JOIN events AS e ON e.uuid = o.uuid AND e.seq = o.seq AND e.slot = o.slot",
                (_timestamp(now), max(1, limit)),
            ).fetchall()
        return [
            OutboxItem(
                uuid=uuid,
                seq=seq,
                slot=slot,
                pending=tuple(json.loads(pending)),
                attempts=attempts,
                due=datetime.fromtimestamp(due, timezone.utc),
                record=_record(record) if record else None,  # None: the job was removed or purged
            )
            for uuid, seq, slot, pending, attempts, due, record in rows
        ]

    def settle_notifications(self, owner: str, settled: list[Settled], deliveries: list[Document]) -> int:
        """Only the lease's holder writes outbox rows; one whose lease ran out in a long pass settles what
        it did, which at worst repeats a delivery (same ``webhook-id``) that another holder also made."""
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO deliveries (job_uuid, subscription, expires_at, doc) VALUES (?, ?, ?, ?)",
                [
                    (
                        _column(d.get("job_uuid")),
                        _column(d.get("subscription")),
                        _timestamp(d.get("expires_at")),
                        dumps_document(d),
                    )
                    for d in deliveries
                ],
            )
            retried = conn.executemany(
                "UPDATE outbox SET pending = ?, attempts = ?, due = ? WHERE uuid = ? AND seq = ? AND slot = ?",
                [
                    (json.dumps(list(one.pending)), one.attempts, _timestamp(one.due), *_outbox_key(one))
                    for one in settled
                    if one.pending
                ],
            )
            count = max(retried.rowcount, 0)
            done = conn.executemany(
                "DELETE FROM outbox WHERE uuid = ? AND seq = ? AND slot = ?",
                [_outbox_key(one) for one in settled if not one.pending],
            )
            return count + max(done.rowcount, 0)

    def release_notifications(self, owner: str) -> None:
        self._held.pop(owner, None)
        with self._transaction() as conn:
            conn.execute("DELETE FROM notify_lease WHERE name = 'outbox' AND owner = ?", (owner,))

    def event_fates(
        self, items: list[OutboxItem], *, now: datetime, grace_seconds: float
    ) -> list[tuple[EventFate, str | None]]:
        """One transaction wrote the event, the job's change and the outbox row: a row's event is applied."""
        from .outbox import EventFate

        uuids = sorted({item.uuid for item in items})
        with self._reading() as conn:
            marks = ", ".join("?" * len(uuids))
            rows = conn.execute(f"SELECT uuid, pipeline_uuid FROM jobs WHERE uuid IN ({marks})", uuids).fetchall()
        pipelines = dict(rows)
        return [
            (EventFate.GONE if item.record is None else EventFate.APPLIED, pipelines.get(item.uuid)) for item in items
        ]

    def list_deliveries(
        self, *, job_uuid: str | None = None, subscription: str | None = None, limit: int = 100
    ) -> list[Document]:
        clauses, params = ["1 = 1"], []
        for column, value in (("job_uuid", job_uuid), ("subscription", subscription)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT doc FROM deliveries WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT ?"
        with self._reading() as conn:
            rows = conn.execute(sql, (*params, max(1, limit))).fetchall()
        return [loads_document(text) for (text,) in rows]

    def expire_deliveries(self, now: datetime) -> int:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM deliveries WHERE expires_at <= ?", (_timestamp(now),)).rowcount

    # -- read side (the read API and metrics) -----------------
    def query_jobs(self, where: JobFilter, *, after: str | None = None, limit: int = 50) -> JobPage:
        sql, params = list_sql(where, parse_job_cursor(after), max(1, limit) + 1)
        with self._reading() as conn:
            rows = conn.execute(sql, params).fetchall()
        return page_of_jobs([_summary(row) for row in rows], max(1, limit))

    def count_jobs(self, where: JobFilter) -> dict[str, int]:
        clauses, params = _job_where(where)
        sql = f"SELECT state, COUNT(*) FROM jobs WHERE {' AND '.join(clauses)} GROUP BY state"
        with self._reading() as conn:
            return {str(state): int(n) for state, n in conn.execute(sql, tuple(params))}

    def job_totals(self) -> dict[tuple[str, str], int]:
        sql = "SELECT state, pipeline_uuid, COUNT(*) FROM jobs WHERE visible = 1 GROUP BY state, pipeline_uuid"
        with self._reading() as conn:
            return {(str(state), str(pipeline)): int(n) for state, pipeline, n in conn.execute(sql)}

    def waiting_for_server(self) -> bool:
        return False  # a local file: nothing to wait for

    def ping(self, timeout: float = 2.0) -> None:
        if not self.path.exists():
            raise PipelineJobsError(ErrorKind.STORAGE_UNAVAILABLE, f"the SQLite store {self.path} is gone")
        with self._reading() as conn:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()

    # -- workflow engines' reports ------------------------------------------------------------------
    def set_progress(self, uuid: str, changes: Document) -> bool:
        """One ``UPDATE`` of the stored document: ``json_set`` for values, ``json_remove`` for None."""
        with self._transaction() as conn:
            return _set_progress(conn, uuid, changes)

    def record_task(self, record: EventRecord, progress: Document) -> AppendResult:
        """The log row and the summary's ``UPDATE`` in one transaction: one commit, one sync."""
        row = _record_row(record)
        with self._transaction() as conn:
            try:
                _log_rows(conn, [row])
            except sqlite3.IntegrityError:
                existing = self._delivery(conn, record.uuid, record.event_id)
                if existing is None:
                    raise
                return AppendResult(Append.REPLAYED, existing)
            if progress:
                _set_progress(conn, record.uuid, progress)
            return AppendResult(Append.APPLIED)

    # -- job counts: kept by the ``job_counts`` triggers, in every writing transaction -----
    def count_move(self, pipeline_uuid: str | None, from_state: str, to_state: str) -> None:
        """Nothing to do: the triggers moved the counts in the event's own transaction."""

    def job_counts(self, timeout: float = 2.0) -> dict[tuple[str, str], int]:
        with self._reading() as conn:
            rows = conn.execute("SELECT state, pipeline, n FROM job_counts").fetchall()
        return {_count_label(state, pipeline): int(n) for state, pipeline, n in rows}

    def recount_jobs(self, *, settle: float | None = None, wait: Callable[[float], Any] = time.sleep) -> Recount:
        """Exact, in one write transaction (``settle`` and ``wait`` are MongoDB's; nothing moves here meanwhile): the
        triggers leave nothing to repair unless someone wrote the file without them."""
        started = time.monotonic()
        with self._transaction() as conn:
            counted = {(s, p): n for s, p, n in conn.execute("SELECT state, pipeline, n FROM job_counts")}
            actual_sql = f"SELECT {_COUNT_KEY.format(row='jobs')}, COUNT(*) FROM jobs WHERE visible = 1 GROUP BY 1, 2"
            actual = {(s, p): n for s, p, n in conn.execute(actual_sql)}
            fixes = count_corrections(counted, actual)
            conn.executemany(
                "INSERT INTO job_counts (state, pipeline, n) VALUES (?, ?, ?)"
                " ON CONFLICT (state, pipeline) DO UPDATE SET n = excluded.n",
                [(state, pipeline, actual.get((state, pipeline), 0)) for state, pipeline in fixes],
            )
        shown = {_count_label(*key): change for key, change in fixes.items()}
        return Recount(True, shown, time.monotonic() - started)


def _count_label(state: str, pipeline: str) -> tuple[str, str]:
    """A ``job_counts`` key as /metrics labels it: '' stands for null, shown "None" as ``job_totals`` shows it."""
    return (state or "None", pipeline or "None")


def list_sql(where: JobFilter, position: tuple[datetime, str] | None, limit: int) -> tuple[str, tuple[Any, ...]]:
    """The job list's query: summaries matching ``where`` after ``position``, by (created desc, uuid desc)."""
    clauses, params = _job_where(where)
    if position is not None:
        created, uuid = position
        clauses.append(f"({_CREATED} < ? OR ({_CREATED} = ? AND uuid < ?))")
        params += [_iso(created), _iso(created), uuid]
    sql = (
        f"SELECT {_SUMMARY_COLUMNS} FROM jobs WHERE {' AND '.join(clauses)} ORDER BY {_CREATED} DESC, uuid DESC LIMIT ?"
    )
    return sql, (*params, limit)


def _iso(moment: datetime) -> str:
    """A time as the ISO text the stored documents hold (UTC, ``+00:00``): compares as time does."""
    return _utc(moment).isoformat()


def _job_where(where: JobFilter) -> tuple[list[str], list[Any]]:
    """SQL conditions for ``where``; each uses an index of the read API (see ``_SCHEMA``)."""
    clauses: list[str] = ["1 = 1"]
    params: list[Any] = []
    if where.states:
        clauses.append(f"state IN ({', '.join('?' * len(where.states))})")
        params += list(where.states)
    if where.pipeline_uuid is not None:
        clauses.append("pipeline_uuid = ?")
        params.append(where.pipeline_uuid)
    if where.session is not None:
        clauses.append(f"{_SESSION} = ?")
        params.append(where.session)
    if where.child_of is not None:
        clauses.append("uuid IN (SELECT uuid FROM job_parents WHERE parent = ?)")
        params.append(where.child_of)
    if where.archive_path:
        clauses.append(f"instr({_ARCHIVE_PATH}, ?) > 0")
        params.append(where.archive_path)
    if where.created_after is not None:
        clauses.append(f"{_CREATED} >= ?")
        params.append(_iso(where.created_after))
    if where.created_before is not None:
        clauses.append(f"{_CREATED} < ?")
        params.append(_iso(where.created_before))
    if where.updated_after is not None:
        clauses.append("updated >= ?")
        params.append(_timestamp(where.updated_after))
    if where.updated_before is not None:
        clauses.append("updated < ?")
        params.append(_timestamp(where.updated_before))
    if not where.include_hidden:
        clauses.append("visible = 1")
    return clauses, params


#: how SQLite reads each summary field: a column where the store keeps one, else the stored document's field
_SUMMARY_SQL = {
    name: {
        "uuid": "uuid",
        "state": "state",
        "pipeline_uuid": "pipeline_uuid",
        "last_event": "last_event",
        "created": _CREATED,
        "updated": "updated",
        "revision": "revision",
        "visible": "visible",
    }.get(name, f"json_extract(doc, '$.{path}')")
    for name, path in JOB_SUMMARY_PATHS.items()
}
_SUMMARY_COLUMNS = ", ".join(_SUMMARY_SQL.values())
#: the columns whose SQLite value is not the field's value (JSON text, ISO text, a timestamp, 0/1)
_FROM_SQL: dict[str, Any] = {
    "child_of": lambda text: json.loads(text) if text and text != "[]" else [],  # json.loads costs ~1 us
    "created": lambda text: datetime.fromisoformat(text) if text else None,  # dumps_document's UTC text
    "updated": _moment,
    "visible": bool,
}


def _summary(row: tuple[Any, ...]) -> Document:
    """A list row as the job's summary; called 50 times a page, so only the conversions it needs."""
    values = dict(zip(JOB_SUMMARY_FIELDS, row, strict=True))
    for name, convert in _FROM_SQL.items():
        values[name] = convert(values[name])
    return job_summary(values)


# -- workflow engines' reports ------------------------------------------------------------------
def _set_progress(conn: sqlite3.Connection, uuid: str, changes: Document) -> bool:
    """``set_progress`` inside a transaction: one ``UPDATE`` of the job's stored document."""
    setting = [(_json_path(key), json.dumps(_tagged(value))) for key, value in changes.items() if value is not None]
    removing = [_json_path(key) for key, value in changes.items() if value is None]
    expression, params = "doc", list[Any]()
    if setting:
        expression = f"json_set({expression}{', ?, json(?)' * len(setting)})"
        params += [item for pair in setting for item in pair]
    if removing:
        expression = f"json_remove({expression}{', ?' * len(removing)})"
        params += removing
    return bool(conn.execute(f"UPDATE jobs SET doc = {expression} WHERE uuid = ?", (*params, uuid)).rowcount)


def _json_path(key: str) -> str:
    """A ``progress`` key as an SQLite JSON path: ``failed.12`` -> ``$.progress."failed"."12"``."""
    return "$.progress" + "".join(f'."{segment}"' for segment in progress_path(key))
