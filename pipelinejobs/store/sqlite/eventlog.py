"""Pipelines, jobs and their event log: an event is one ``events`` row and one ``UPDATE`` of the job's row."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

from ..records import (
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
    removed_key,
    unlogged_history,
)
from .base import SqliteBase
from .encoding import (
    _HEAD_COLUMNS,
    _column,
    _head,
    _moment,
    _record,
    _record_row,
    _timestamp,
    dumps_document,
    loads_document,
)

#: log outcomes that are history entries (a stale callback is in the log, not in the job's history)
_ENTRY_OUTCOMES = (Outcome.APPLIED.value, Outcome.IMPORTED.value)


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


class SqliteEventLog(SqliteBase):
    """Pipelines, jobs and the event log: create, append, history, hide, remove, audit."""

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
