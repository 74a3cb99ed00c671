"""The watch table (deadlines, heartbeats) and retention: what the watchdog and retention passes read and write."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ..records import (
    ANY_LOGGED,
    Document,
)
from .base import SqliteBase
from .encoding import _HEAD_COLUMNS, _head, _timestamp, _utc, dumps_document, loads_document


class SqliteWatch(SqliteBase):
    """The watchdog's records (deadlines, heartbeats) and retention's reads and purges."""

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
