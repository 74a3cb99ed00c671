"""The embedded backend: one SQLite file, for running without a MongoDB.

It keeps the documents the MongoDB backend keeps (compat §1, §4), as JSON text,
with a few columns copied out of each document for filtering and sorting. Every
write is one ``BEGIN IMMEDIATE`` transaction, which takes the file's write lock
up front, so reactor processes sharing the file serialise instead of losing
history entries; the busy timeout makes them wait their turn.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ErrorKind, PipelineJobsError
from .base import Document

DEFAULT_BUSY_TIMEOUT = 30.0  # seconds a writer waits for the file's lock before giving up
_DATE = "$date"  # JSON tag of a datetime
_LITERAL = "$literal"  # JSON tag of a stored dict that would otherwise look like a tag
_TAGS = frozenset({_DATE, _LITERAL})

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
)


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


def _tagged(value: Any) -> Any:
    """``value`` with datetimes replaced by ``{"$date": iso}``; dict key order is kept."""
    if isinstance(value, datetime):
        return {_DATE: _utc(value).isoformat()}
    if isinstance(value, dict):
        plain = {str(key): _tagged(item) for key, item in value.items()}
        if len(plain) == 1 and next(iter(plain)) in _TAGS:  # a stored dict that looks like a tag:
            return {_LITERAL: list(plain.items())}  # kept as pairs, which the decoder never untags
        return plain
    if isinstance(value, (list, tuple)):
        return [_tagged(item) for item in value]
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


def _job_columns(doc: Document) -> tuple[Any, ...]:
    return (
        _column(doc.get("state")),
        _column(doc.get("pipeline_uuid")),
        0 if doc.get("_visible") is False else 1,  # like Mongo's {"_visible": {"$ne": false}}
        _timestamp(doc.get("updated")),
        dumps_document(doc),
    )


# -- the store -------------------------------------------------------------------------------
class SqliteJobStore:
    """:class:`~pipelinejobs.store.base.JobStore` on one SQLite file, safe across processes and threads."""

    backend = "sqlite"

    def __init__(self, path: str | Path, *, timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # one connection; threads sharing this object take turns
        self._conn: sqlite3.Connection | None = None
        with self._translate_errors():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            try:
                # WAL lets readers go on while one process writes; the mode is stored in the file
                conn.execute("PRAGMA journal_mode=WAL")
                self._conn = conn
                self._create_schema()
            except BaseException:
                self._conn = None
                conn.close()
                raise

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
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Document]:
        with self._lock, self._translate_errors():
            return [loads_document(row[0]) for row in self._connection().execute(sql, params)]

    def _create_schema(self) -> None:
        with self._transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    @staticmethod
    def _audit(conn: sqlite3.Connection, record: Document) -> None:
        conn.execute(
            "INSERT INTO updates (uuid, action, doc) VALUES (?, ?, ?)",
            (_column(record.get("uuid")), _column(record.get("action")), dumps_document(record)),
        )

    @staticmethod
    def _write_job(conn: sqlite3.Connection, doc: Document) -> Document:
        """Store ``doc`` over its row; returns it as a later read would (decoded from the stored text)."""
        columns = _job_columns(doc)
        conn.execute(
            "UPDATE jobs SET state = ?, pipeline_uuid = ?, visible = ?, updated = ?, doc = ? WHERE uuid = ?",
            (*columns, doc["uuid"]),
        )
        return loads_document(columns[-1])

    @staticmethod
    def _touch(doc: Document, now: datetime) -> None:
        """What every change records: ``updated``, ``modified_date`` and one more revision."""
        doc["updated"] = now
        properties = doc.setdefault("_properties", {})
        properties["modified_date"] = now
        properties["revision"] = properties.get("revision", 0) + 1

    # -- protocol --------------------------------------------------------
    def ensure_indexes(self) -> None:
        self._create_schema()

    def find_pipeline(self, uuid: str) -> Document | None:
        found = self._read("SELECT doc FROM pipelines WHERE uuid = ?", (uuid,))
        return found[0] if found else None

    def save_pipeline(self, pipeline: Document) -> tuple[Document, bool]:
        with self._transaction() as conn:
            try:
                conn.execute(
                    "INSERT INTO pipelines (uuid, id, doc) VALUES (?, ?, ?)",
                    (pipeline["uuid"], _column(pipeline.get("id")), dumps_document(pipeline)),
                )
                return dict(pipeline), True
            except sqlite3.IntegrityError:  # uuid or id taken: answer with what is stored
                row = conn.execute(
                    "SELECT doc FROM pipelines WHERE uuid = ? OR id = ? ORDER BY uuid = ? DESC LIMIT 1",
                    (pipeline["uuid"], _column(pipeline.get("id")), pipeline["uuid"]),
                ).fetchone()
                return (loads_document(row[0]) if row else dict(pipeline)), False

    def find_job(self, uuid: str) -> Document | None:
        found = self._read("SELECT doc FROM jobs WHERE uuid = ?", (uuid,))
        return found[0] if found else None

    def list_jobs(
        self,
        *,
        state: str | None = None,
        pipeline_uuid: str | None = None,
        include_hidden: bool = False,
        limit: int = 100,
    ) -> list[Document]:
        where, params = ["1 = 1"], []
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
        sql = f"SELECT doc FROM jobs WHERE {' AND '.join(where)} ORDER BY updated DESC, rowid LIMIT ?"
        return self._read(sql, tuple(params))

    def insert_job(self, job: Document, audit: Document) -> tuple[Document, bool]:
        with self._transaction() as conn:
            row = conn.execute("SELECT doc FROM jobs WHERE uuid = ?", (job["uuid"],)).fetchone()
            if row is not None:  # never overwrite: a repeated create gets the stored job
                return loads_document(row[0]), False
            conn.execute(
                "INSERT INTO jobs (state, pipeline_uuid, visible, updated, doc, uuid) VALUES (?, ?, ?, ?, ?, ?)",
                (*_job_columns(job), job["uuid"]),
            )
            self._audit(conn, audit)
            return job, True

    def apply_event(
        self,
        uuid: str,
        *,
        from_states: Collection[str] | None,
        entry: Document,
        new_state: str | None,
        now: datetime,
        audit: Document,
    ) -> Document | None:
        with self._transaction() as conn:
            row = conn.execute("SELECT doc FROM jobs WHERE uuid = ? AND visible = 1", (uuid,)).fetchone()
            if row is None:
                return None
            doc = loads_document(row[0])
            if from_states is not None and doc.get("state") not in from_states:
                return None
            doc.setdefault("history", []).append(dict(entry))
            doc["last_event"] = entry["name"]
            if new_state is not None:
                doc["state"] = new_state
            self._touch(doc, now)
            updated = self._write_job(conn, doc)
            self._audit(conn, audit)
            return updated

    def hide_job(self, uuid: str, *, now: datetime, audit: Document) -> Document | None:
        with self._transaction() as conn:
            row = conn.execute("SELECT doc FROM jobs WHERE uuid = ? AND visible = 1", (uuid,)).fetchone()
            if row is None:
                return None
            doc = loads_document(row[0])
            doc["_visible"] = False
            self._touch(doc, now)
            hidden = self._write_job(conn, doc)
            self._audit(conn, audit)
            return hidden

    def remove_job(self, uuid: str, *, expected_revision: int, tombstone: Document) -> bool:
        with self._transaction() as conn:
            row = conn.execute("SELECT doc FROM jobs WHERE uuid = ?", (uuid,)).fetchone()
            if row is None:
                return False
            properties = loads_document(row[0]).get("_properties") or {}
            if properties.get("revision") != expected_revision:
                return False
            self._audit(conn, tombstone)
            conn.execute("DELETE FROM jobs WHERE uuid = ?", (uuid,))
            return True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
