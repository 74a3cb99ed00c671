"""Pipelines, jobs and their event log: the log record is the compare-and-set, the job document follows it."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

import pymongo
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
)

from ...documents import RECORD_SOURCE
from ...errors import ErrorKind, PipelineJobsError
from ..records import (
    HEAD_FIELDS,
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
from .base import MongoBase, _Abort, _at_revision, _retry_once, log
from .counts import _COUNTED
from .schema import _EVENT_INDEXES

_HEAD_PROJECTION = {"_id": False, **dict.fromkeys(HEAD_FIELDS, True)}
_KNOWN_LOGGED = 10000  # job uuids remembered as having a log (a bounded LRU)


class MongoEventLog(MongoBase):
    """Pipelines, jobs and the event log: create, append, history, hide, remove, audit."""

    def _insert_record(self, record: EventRecord) -> Any:
        """Insert a log record, retrying once after a network error; a retry that finds its own record succeeds.

        The insert is the first of the event's two writes (``_events_first``): the caller's next write,
        the job update (or the record's removal), carries the full write concern for both.
        """
        doc = record.to_document()
        if record.notify:  # the outbox rides on the record: logged, and so due, in the same insert
            from ..outbox import outbox_fields

            doc.update(outbox_fields(record))
        try:
            return self._events_first.insert_one(dict(doc)).inserted_id
        except ConnectionFailure:
            try:
                return self._events_first.insert_one(dict(doc)).inserted_id
            except DuplicateKeyError:
                key = {"uuid": record.uuid, "seq": record.seq, "slot": record.slot}
                mine = self.events.find_one({**key, "event_uuid": record.event_uuid}, {"_id": True})
                if mine is None:
                    raise
                return mine["_id"]

    def _remember_logged(self, uuid: str) -> None:
        self._logged[uuid] = None
        self._logged.move_to_end(uuid)
        while len(self._logged) > _KNOWN_LOGGED:
            self._logged.popitem(last=False)

    def _ensure_logged(self, uuid: str, source: Any = None) -> None:
        """Before the first logged event of a job written by python-datacatalog, copy its history to the log.

        The document's window will drop old entries; those must be in the log first. Jobs
        this manager created are logged from their ``create`` on; a process remembers
        the jobs it has seen with a log, so this costs a round trip once per job per process.
        """
        if uuid in self._logged:
            self._logged.move_to_end(uuid)
            return
        if source == RECORD_SOURCE:  # created with a log (jobs of earlier versions: `db init` logs them)
            return
        if self.events.find_one({"uuid": uuid}, {"_id": True}) is None:
            doc = self.jobs.find_one({"uuid": uuid}, {"_id": False, "history": True})
            history = (doc or {}).get("history") or []
            imported = [imported_record(uuid, position, entry).to_document() for position, entry in enumerate(history)]
            if imported:
                with contextlib.suppress(DuplicateKeyError, pymongo.errors.BulkWriteError):
                    self.events.insert_many(imported, ordered=False)  # a racing importer wrote the same keys
                log.info("job %s: %d history entries copied to the event log", uuid, len(imported))
        self._remember_logged(uuid)

    def find_pipeline(self, uuid: str) -> Document | None:
        self._require_indexes("pipelines.uuid_unique")
        with self._translate():
            return self.pipelines.find_one({"uuid": uuid}, {"_id": False})

    def save_pipeline(self, pipeline: Document) -> tuple[Document, bool]:
        with self._translate():
            try:
                self.pipelines.insert_one(dict(pipeline))
                return dict(pipeline), True
            except DuplicateKeyError:
                existing = self.pipelines.find_one({"uuid": pipeline["uuid"]}, {"_id": False})
                if existing is None and pipeline.get("id") is not None:
                    existing = self.pipelines.find_one({"id": pipeline["id"]}, {"_id": False})
                return existing or dict(pipeline), False

    def list_pipelines(self) -> list[Document]:
        with self._translate():
            return list(self.pipelines.find({}, {"_id": False}).sort("id", pymongo.ASCENDING))

    def find_head(self, uuid: str) -> Document | None:
        self._require_indexes(*_EVENT_INDEXES)
        with self._translate():
            return self.jobs.find_one({"uuid": uuid}, _HEAD_PROJECTION)

    def find_job(self, uuid: str) -> Document | None:
        self._require_indexes("jobs.uuid_unique")
        with self._translate():
            return self.jobs.find_one({"uuid": uuid}, {"_id": False})

    def list_jobs(
        self,
        *,
        state: str | None = None,
        pipeline_uuid: str | None = None,
        include_hidden: bool = False,
        limit: int = 100,
    ) -> list[Document]:
        query: dict[str, Any] = {}
        if state:
            query["state"] = state
        if pipeline_uuid:
            query["pipeline_uuid"] = pipeline_uuid
        if not include_hidden:
            query["_visible"] = {"$ne": False}
        with self._translate():
            cursor = self.jobs.find(query, {"_id": False, "history": False}).sort("updated", pymongo.DESCENDING)
            cursor = cursor.limit(limit)
            return list(cursor)

    def insert_job(self, job: Document, audit: Document) -> tuple[Document, bool]:
        with self._translate():
            try:
                self.jobs.insert_one(dict(job))
            except DuplicateKeyError:
                existing = self.jobs.find_one({"uuid": job["uuid"]}, {"_id": False})
                if existing is None:  # removed between the two statements; report, do not guess
                    raise PipelineJobsError(
                        ErrorKind.CONFLICT, f"job {job['uuid']} changed while being created; retry"
                    ) from None
                return existing, False
            # after the document: a create that fails half-way leaves a job whose log starts at seq 1
            created = creation_record(job)
            with contextlib.suppress(DuplicateKeyError):
                self.events.insert_one(created.to_document())
            self.updates.insert_one(dict(audit))
        self._count_moves(None, job)  # job counts
        self._remember_logged(job["uuid"])
        return job, True

    def append_event(
        self, record: EventRecord, *, expected_revision: int, job_source: str | None = None
    ) -> AppendResult:
        uuid = record.uuid
        with self._translate():
            self._ensure_logged(uuid, job_source)
            try:
                inserted_id = self._insert_record(record)
            except DuplicateKeyError as exc:
                if record.event_id is not None and "event_id" in ((exc.details or {}).get("keyPattern") or {}):
                    existing = self.find_delivery(uuid, record.event_id)
                    if existing is not None:
                        # its writer may not have made it durable yet: apply it with the full concern first
                        if existing.outcome is Outcome.APPLIED and existing.slot == "" and existing.seq > 0:
                            self._apply_logged(existing)
                        return AppendResult(Append.REPLAYED, existing)
                # another writer took this revision: make sure the job shows it, then read again
                self._roll_forward(uuid, expected_revision)
                return AppendResult(Append.MOVED)
            update = self._apply_update(record)
            applied = _retry_once(lambda: self.jobs.update_one(_at_revision(uuid, expected_revision), update))
            if applied.matched_count == 1:
                return AppendResult(Append.APPLIED)
            # the job moved on without our update: either a writer rolled our record forward
            # (then the window shows its entry), or something else changed or removed the job
            window = self.jobs.find_one({"uuid": uuid}, {"_id": False, "history": {"$slice": -self.history_window}})
            if window is not None and any(e.get("uuid") == record.event_uuid for e in window.get("history") or []):
                return AppendResult(Append.APPLIED)
            self.events.delete_one({"_id": inserted_id})
            return AppendResult(Append.MOVED)

    def log_unlogged_jobs(self) -> int:
        """Copy into the log the history of jobs this manager created before it had one (`db init`)."""
        copied = 0
        with self._translate():
            for doc in self.jobs.find({"_properties.source": RECORD_SOURCE}, {"_id": False, "uuid": True}):
                if self.events.find_one({"uuid": doc["uuid"]}, {"_id": True}) is None:
                    self._logged.pop(doc["uuid"], None)
                    self._ensure_logged(doc["uuid"])
                    copied += 1
        return copied

    def record_stale(self, record: EventRecord) -> AppendResult:
        """A record that leaves the job as it is (stale callback, heartbeat, task report). A job
        python-datacatalog wrote has its history copied to the log first (once per job and process):
        once the log holds any record of the job, nothing copies that history any more."""
        with self._translate():
            self._ensure_logged(record.uuid)
            try:
                self.events.insert_one(record.to_document())
            except DuplicateKeyError:
                existing = self.find_delivery(record.uuid, record.event_id) if record.event_id else None
                if existing is None:
                    raise
                return AppendResult(Append.REPLAYED, existing)
        return AppendResult(Append.APPLIED)

    def find_delivery(self, uuid: str, event_id: str) -> EventRecord | None:
        with self._translate():
            found = self.events.find_one({"uuid": uuid, "event_id": event_id}, {"_id": False})
        return EventRecord.from_document(found) if found else None

    def history(self, uuid: str, *, after: str | None = None, limit: int = 100) -> HistoryPage:
        position = parse_cursor(after)
        query: dict[str, Any] = {"uuid": uuid}
        if position is not None:
            seq, slot = position
            query["$or"] = [{"seq": {"$gt": seq}}, {"seq": seq, "slot": {"$gt": slot}}]
        limit = max(1, limit)
        with self._translate():
            cursor = self.events.find(query, {"_id": False}).sort([("seq", 1), ("slot", 1)]).limit(limit + 1)
            rows = [EventRecord.from_document(doc) for doc in cursor]
            if not rows and self.events.find_one({"uuid": uuid}, {"_id": True}) is None:
                # a job python-datacatalog wrote and no event has touched since: its history is the document's
                doc = self.jobs.find_one({"uuid": uuid}, {"_id": False, "history": True})
                return unlogged_history(uuid, (doc or {}).get("history"), position, limit)
        return page_of(rows, limit)

    def hide_job(self, uuid: str, *, now: datetime, audit: Document) -> Document | None:
        update = {
            "$set": {"_visible": False, "updated": now, "_properties.modified_date": now},
            "$inc": {"_properties.revision": 1},
        }

        def work(session: Any) -> Document | None:
            doc = self.jobs.find_one_and_update(
                {"uuid": uuid, "_visible": {"$ne": False}},
                update,
                projection=_HEAD_PROJECTION,
                return_document=pymongo.ReturnDocument.AFTER,
                session=session,
            )
            if doc is not None:
                self.updates.insert_one(dict(audit), session=session)
                self._count_moves({**doc, "_visible": True}, None, session)  # job counts
            return doc

        return self._atomically(work)

    def remove_job(self, uuid: str, *, expected_revision: int, tombstone: Document) -> bool:
        precondition = {"uuid": uuid, "_properties.revision": expected_revision}
        set_aside = removed_key(uuid, tombstone)

        def work(session: Any) -> bool:
            written = self.updates.insert_one(dict(tombstone), session=session)
            # the log is kept, under a key a re-created job with the same uuid can never meet
            self.events.update_many({"uuid": uuid}, {"$set": {"uuid": set_aside}}, session=session)
            removed = self.jobs.find_one_and_delete(precondition, projection=_COUNTED, session=session)
            if removed is not None:
                self._count_moves(removed, None, session)  # job counts
                return True
            if session is not None:
                raise _Abort()
            # no transactions: undo by hand, newest first
            self.events.update_many({"uuid": set_aside}, {"$set": {"uuid": uuid}})
            self.updates.delete_one({"_id": written.inserted_id})
            return False

        try:
            removed = self._atomically(work)
        except _Abort:
            return False
        if removed:
            self._logged.pop(uuid, None)
        return removed

    def audit_trail(self, uuid: str) -> list[Document]:
        with self._translate():
            return list(self.updates.find({"uuid": uuid}, {"_id": False}).sort("_id", pymongo.ASCENDING))
