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

The store is one class built from a mixin per concern (see each module's docstring); this module puts
it together and re-exports the names the rest of the package, the tests and the benchmarks import.
"""

from __future__ import annotations

from .base import DEFAULT_BUSY_TIMEOUT
from .encoding import _timestamp, dumps_document, loads_document
from .eventlog import SqliteEventLog
from .notifications import SqliteNotifications
from .paths import default_sqlite_path, sqlite_path
from .reads import SqliteReads, list_sql
from .schema import SCHEMA_VERSION
from .watch import SqliteWatch

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "SCHEMA_VERSION",
    "SqliteJobStore",
    "_timestamp",
    "default_sqlite_path",
    "dumps_document",
    "list_sql",
    "loads_document",
    "sqlite_path",
]


class SqliteJobStore(SqliteEventLog, SqliteWatch, SqliteNotifications, SqliteReads):
    """:class:`~pipelinejobs.store.base.JobStore` on one SQLite file, safe across processes and threads."""

    backend = "sqlite"
    local = True

    def __enter__(self) -> SqliteJobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
