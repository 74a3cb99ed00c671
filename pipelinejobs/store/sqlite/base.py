"""The SQLite store's foundation: the file's write lock, its connections and transactions, error translation
and schema creation, which the per-concern mixins of :class:`SqliteJobStore` build on.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from ...errors import ErrorKind, PipelineJobsError
from ..files import private_store_file
from ..records import (
    DEFAULT_HISTORY_WINDOW,
    DEFAULT_INLINE_DATA_BYTES,
    Document,
    EventRecord,
)
from ..shared import SharedStore
from .encoding import _column, _record, dumps_document
from .schema import _MIGRATE_TO_2, _NEW_COLUMNS, _SCHEMA, SCHEMA_VERSION

_IDLE_READERS = 8  # read connections kept open between reads
DEFAULT_BUSY_TIMEOUT = 30.0  # seconds a writer waits for the file's lock before giving up


class SqliteBase(SharedStore):
    """The file, its connections and transactions: what every concern's methods write and read through."""

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

    @staticmethod
    def _delivery(conn: sqlite3.Connection, uuid: str, event_id: str | None) -> EventRecord | None:
        if event_id is None:
            return None
        row = conn.execute("SELECT record FROM events WHERE uuid = ? AND event_id = ?", (uuid, event_id)).fetchone()
        return _record(row[0]) if row else None

    def ensure_indexes(self) -> None:
        self._create_schema()

    def missing_indexes(self) -> list[str]:
        with self._reading() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        return [] if version == SCHEMA_VERSION else [f"schema version {SCHEMA_VERSION}"]

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
