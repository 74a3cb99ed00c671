"""Notifications: subscriptions, the outbox (written with its event, in the event's transaction) and deliveries."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ..records import (
    Document,
)
from .base import SqliteBase
from .encoding import _column, _record, _timestamp, dumps_document, loads_document

if TYPE_CHECKING:
    from ..outbox import EventFate, OutboxItem, Settled


def _outbox_key(settled: Settled) -> tuple[str, int, str]:
    """The outbox row of a settled item."""
    return (settled.item.uuid, settled.item.seq, settled.item.slot)


class SqliteNotifications(SqliteBase):
    """Subscriptions, the outbox's steps for :class:`SharedStore`'s claim, and delivery records."""

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
        from ..outbox import OutboxItem

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
        from ..outbox import EventFate

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
