"""Notifications: subscriptions, the outbox (fields of the log records still to be told of) and deliveries."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import pymongo
from pymongo.errors import (
    DuplicateKeyError,
)

from ..records import (
    Document,
    EventRecord,
)
from .base import MongoBase
from .schema import _pass_document

if TYPE_CHECKING:
    from ..outbox import EventFate, OutboxItem, Settled


class MongoNotifications(MongoBase):
    """Subscriptions, the outbox's steps for :class:`SharedStore`'s claim, and delivery records."""

    # -- notifications: subscriptions, the outbox, delivery records ----------------
    def save_subscription(self, subscription: Document) -> None:
        with self._translate():
            self.subscriptions.insert_one(dict(subscription))

    def list_subscriptions(self) -> list[Document]:
        with self._translate():
            return list(self.subscriptions.find({}, {"_id": False}).sort("created", pymongo.ASCENDING))

    def find_subscription(self, subscription_id: str) -> Document | None:
        with self._translate():
            return self.subscriptions.find_one({"id": subscription_id}, {"_id": False})

    def delete_subscription(self, subscription_id: str) -> bool:
        with self._translate():
            return self.subscriptions.delete_one({"id": subscription_id}).deleted_count == 1

    def claim_notifications(self, now: datetime, *, until: datetime, owner: str, limit: int) -> list[OutboxItem]:
        # before anything is sent: a catalog db init has not prepared for this version's delivery records
        # would refuse each settlement, and every notification would be sent again on every pass
        self._require_indexes("events.notify_due", "deliveries.jobs_at")
        return super().claim_notifications(now, until=until, owner=owner, limit=limit)

    def _outbox_is_due(self, now: datetime) -> bool:
        with self._translate():
            return self.events.find_one({"notify_due": {"$lte": now}}, {"_id": True}) is not None

    def _take_outbox_lease(self, owner: str, now: datetime, until: datetime) -> bool:
        lease = {"_id": "outbox", "$or": [{"until": {"$lt": now}}, {"owner": owner}]}
        with self._translate():
            try:
                self.leases.update_one(lease, {"$set": {"owner": owner, "until": until}}, upsert=True)
            except DuplicateKeyError:  # another dispatcher's lease is live: the upsert met its document
                return False
        return True

    def _due_outbox_items(self, now: datetime, limit: int) -> list[OutboxItem]:
        from ..outbox import OutboxItem

        with self._translate():
            found = self.events.find({"notify_due": {"$lte": now}}).sort("notify_due", pymongo.ASCENDING)
            docs = list(found.limit(max(1, limit)))
        return [
            OutboxItem(
                uuid=doc["uuid"],
                seq=int(doc["seq"]),
                slot=str(doc.get("slot") or ""),
                pending=tuple(doc.get("notify") or ()),
                attempts=int(doc.get("notify_attempts") or 0),
                due=doc["notify_due"],
                record=EventRecord.from_document(doc),
                ref=doc["_id"],
            )
            for doc in docs
        ]

    def settle_notifications(self, owner: str, settled: list[Settled], deliveries: list[Document]) -> int:
        """The pass's delivery records: one document. The done items: one update of their log records,
        named by ``_id``. Items still pending (rare): one update each, by the record's unique (uuid, seq,
        slot) key.

        Every statement names its records by a whole index and nothing else: the MongoDB-wire server
        scans and decodes the whole log for a filter no index matches as a whole (one that also bounds
        ``notify_due``, say). Only the lease's holder writes these fields; one whose lease ran out in a
        long pass settles what it did, which at worst repeats a delivery (same ``webhook-id``)."""
        done = [one.item.ref for one in settled if not one.pending]
        retries = [
            pymongo.UpdateOne(
                {"uuid": one.item.uuid, "seq": one.item.seq, "slot": one.item.slot},
                {"$set": {"notify": list(one.pending), "notify_attempts": one.attempts, "notify_due": one.due}},
            )
            for one in settled
            if one.pending
        ]
        count = 0
        with self._translate():
            if deliveries:
                self.deliveries.insert_one(_pass_document(deliveries))
            if retries:
                count += self.events.bulk_write(retries, ordered=False).matched_count
            if done:
                cleared = dict.fromkeys(("notify", "notify_attempts", "notify_due"), "")
                count += self.events.update_many({"_id": {"$in": done}}, {"$unset": cleared}).matched_count
        return count

    def release_notifications(self, owner: str) -> None:
        with self._translate():
            self._held.pop(owner, None)
            self.leases.delete_one({"_id": "outbox", "owner": owner})

    def event_fates(
        self, items: list[OutboxItem], *, now: datetime, grace_seconds: float
    ) -> list[tuple[EventFate, str | None]]:
        from ..outbox import EventFate

        if not items:
            return []
        projection = {"_id": False, "uuid": True, "pipeline_uuid": True, "_properties.revision": True}
        with self._translate():
            found = self.jobs.find(
                {"uuid": {"$in": sorted({i.uuid for i in items})}}, {**projection, "history.uuid": True}
            )
            jobs = {doc["uuid"]: doc for doc in found}
            fates = [self._fate(item, jobs.get(item.uuid), now, grace_seconds) for item in items]
            late = [i for i, fate in enumerate(fates) if fate is None]
            for i in late:  # logged long ago and still not applied: its writer died; roll it forward
                self._roll_forward(items[i].uuid, items[i].seq - 1)
                job = self.jobs.find_one({"uuid": items[i].uuid}, {**projection, "history.uuid": True})
                fates[i] = self._fate(items[i], job, now, None) or EventFate.PENDING
        return [
            (fate or EventFate.PENDING, (jobs.get(i.uuid) or {}).get("pipeline_uuid"))
            for fate, i in zip(fates, items, strict=True)
        ]

    def _fate(self, item: OutboxItem, job: Document | None, now: datetime, grace: float | None) -> EventFate | None:
        """The item's fate from its job's revision and history window; None: roll it forward and look again."""
        from ..outbox import EventFate

        record = item.record
        if record is None or job is None:
            return EventFate.GONE
        if any(entry.get("uuid") == record.event_uuid for entry in job.get("history") or []):
            return EventFate.APPLIED
        revision = (job.get("_properties") or {}).get("revision") or 0
        if revision >= item.seq + self.history_window:  # applied long ago: out of the window
            return EventFate.APPLIED
        if revision >= item.seq:  # the job moved on without it: its writer removes the record
            return EventFate.GONE
        if grace is not None and (now - record.date).total_seconds() >= grace:
            return None
        return EventFate.PENDING

    def list_deliveries(
        self, *, job_uuid: str | None = None, subscription: str | None = None, limit: int = 100
    ) -> list[Document]:
        """Newest first: pass documents newest first (by their ``jobs``/``subscriptions`` index), each one's
        rows last to first, until ``limit`` rows match."""
        query: dict[str, Any] = {}
        if job_uuid is not None:
            query["jobs"] = job_uuid
        if subscription is not None:
            query["subscriptions"] = subscription
        order = "at" if query else "_id"
        wanted = {"job_uuid": job_uuid, "subscription": subscription}
        rows: list[Document] = []
        with self._translate():
            for doc in self.deliveries.find(query, {"_id": False, "rows": True}).sort(order, pymongo.DESCENDING):
                for row in reversed(doc.get("rows") or []):
                    if all(value is None or row.get(key) == value for key, value in wanted.items()):
                        rows.append(row)
                        if len(rows) >= max(1, limit):
                            return rows
        return rows

    def expire_deliveries(self, now: datetime) -> int:
        with self._translate():
            return self.deliveries.delete_many({"expires_at": {"$lte": now}}).deleted_count
