"""The watch collection (deadlines, heartbeats) and retention: what the watchdog and retention passes read and write."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pymongo
from pymongo.errors import (
    DuplicateKeyError,
)

from ..records import (
    ANY_LOGGED,
    Document,
)
from .base import MongoBase, _Abort
from .counts import _COUNTED

_RETENTION_HEAD = {
    "_id": False,
    **dict.fromkeys(("uuid", "state", "pipeline_uuid", "updated", "_visible", "_properties", "_admin"), True),
}


class MongoWatch(MongoBase):
    """The watchdog's records (deadlines, heartbeats) and retention's reads and purges."""

    # -- watch: deadlines, heartbeats, retention ----------------------------------
    # These reads name no index hint (see _require_indexes): the passes check once per store object.
    _WATCH_INDEXES = (
        "watch.uuid_unique",
        "watch.due_at",
        "jobs.uuid_unique",
        "jobs.state_updated",
        "jobs.hidden_updated",
    )

    def watch_record(self, uuid: str) -> Document | None:
        with self._translate():
            return self.watch.find_one({"uuid": uuid}, {"_id": False})

    def put_watch(self, record: Document) -> bool:
        revision = int(record.get("revision") or 0)
        with self._translate():
            try:  # the unique uuid index turns "a newer record exists" into a duplicate key: not written
                older = {"uuid": record["uuid"], "revision": {"$lt": revision}}
                written = self.watch.update_one(older, {"$set": dict(record)}, upsert=True)
            except DuplicateKeyError:
                return False
        return written.matched_count == 1 or written.upserted_id is not None

    def enter_state(self, uuid: str, *, state: str, revision: int, now: datetime, deadlines: tuple[str, ...]) -> bool:
        # one pipeline update: due_at = now + the smallest of the record's effective deadlines that apply
        due: Any = None
        if deadlines:
            smallest = {"$min": [f"$effective.{name}" for name in deadlines]}
            due = {"$add": [now, {"$multiply": [smallest, 1000]}]}
        changes = {"state": state, "revision": revision, "since": now, "last_seen": now, "due_at": due}
        with self._translate():
            written = self.watch.update_one({"uuid": uuid, "revision": {"$lt": revision}}, [{"$set": changes}])
        return written.matched_count == 1

    def touch_watch(self, uuid: str, *, revision: int, changes: Document, logged_at: Any = ANY_LOGGED) -> bool:
        query: dict[str, Any] = {"uuid": uuid, "revision": revision}
        if logged_at is not ANY_LOGGED:
            query["logged_at"] = logged_at
        with self._translate():
            return self.watch.update_one(query, {"$set": dict(changes)}).matched_count == 1

    def due_watches(self, now: datetime, *, limit: int) -> list[Document]:
        self._require_indexes(*self._WATCH_INDEXES)
        with self._translate():
            cursor = self.watch.find({"due_at": {"$lte": now}}, {"_id": False})
            return list(cursor.sort("due_at", pymongo.ASCENDING).limit(max(1, limit)))

    def forget_watch(self, uuid: str) -> None:
        with self._translate():
            self.watch.delete_one({"uuid": uuid})

    def retention_candidates(
        self, *, states: list[str], before: datetime, hidden_before: datetime | None, limit: int
    ) -> list[Document]:
        self._require_indexes(*self._WATCH_INDEXES)
        return super().retention_candidates(states=states, before=before, hidden_before=hidden_before, limit=limit)

    def _heads_in_state(self, state: str, before: datetime, limit: int) -> list[Document]:
        with self._translate():
            query = {"state": state, "updated": {"$lt": before}}
            return list(self.jobs.find(query, _RETENTION_HEAD).sort("updated", pymongo.ASCENDING).limit(limit))

    def _hidden_heads(self, before: datetime, limit: int) -> list[Document]:
        with self._translate():
            query = {"_visible": False, "updated": {"$lt": before}}
            return list(self.jobs.find(query, _RETENTION_HEAD).sort("updated", pymongo.ASCENDING).limit(limit))

    def purge_job(self, uuid: str, *, expected_revision: int, tombstone: Document) -> bool:
        at = {"$in": [0, None]} if expected_revision == 0 else expected_revision
        precondition = {"uuid": uuid, "_properties.revision": at}

        def work(session: Any) -> bool:
            written = self.updates.insert_one(dict(tombstone), session=session)
            purged = self.jobs.find_one_and_delete(precondition, projection=_COUNTED, session=session)
            if purged is None:
                if session is not None:
                    raise _Abort()
                self.updates.delete_one({"_id": written.inserted_id})  # no transactions: undo by hand
                return False
            self._count_moves(purged, None, session)  # job counts
            # after the job: a purge cut short leaves log records of a job that is gone, which the
            # tombstone names; it never leaves a job without its log
            self.events.delete_many({"uuid": uuid}, session=session)
            self.watch.delete_one({"uuid": uuid}, session=session)
            return True

        try:
            purged = self._atomically(work)
        except _Abort:
            return False
        if purged:
            self._logged.pop(uuid, None)
        return purged

    def expire_tombstones(self, now: datetime, *, dry_run: bool = False) -> int:
        """The TTL index removes expired tombstones within a minute; the pass does the same so counts are exact."""
        query = {"action": "purge", "expires_at": {"$lte": now}}
        with self._translate():
            if dry_run:
                return self.updates.count_documents(query)
            return self.updates.delete_many(query).deleted_count
