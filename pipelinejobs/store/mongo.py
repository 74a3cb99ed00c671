"""The MongoDB backend (pymongo), on datacatalog's collections (jobs, pipelines, updates) plus the event log.

An event costs three round trips and no transaction: the caller reads the job's
head (a projection), then :meth:`MongoJobStore.append_event` inserts the log
record, whose unique ``(uuid, seq, slot)`` key makes it the compare-and-set, and
applies it to the job document with an update conditional on the revision read.
A writer that dies between the two leaves a record the document does not show
yet; the next writer meets it on the unique key, applies it ("rolls it
forward") and goes on, so the log stays the truth and nothing is applied twice.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import pymongo
from bson.codec_options import CodecOptions
from pymongo import IndexModel
from pymongo.errors import (
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)
from pymongo.write_concern import WriteConcern

from ..documents import RECORD_SOURCE
from ..errors import ErrorKind, PipelineJobsError
from ..logs import get_logger
from .listing import (
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
    progress_path,
    removed_key,
    unlogged_history,
)
from .shared import SharedStore

if TYPE_CHECKING:
    from .outbox import EventFate, OutboxItem, Settled

log = get_logger("store.mongo")
T = TypeVar("T")

_NO_TRANSACTIONS = {20, 263}  # IllegalOperation (standalone), OperationNotSupportedInTransaction
_TOO_LARGE = {10334, 17419, 17420}  # BSONObjectTooLarge and friends
_HEAD_PROJECTION = {"_id": False, **dict.fromkeys(HEAD_FIELDS, True)}
CREATED = "_properties.created_date"  # the job list's order: (created desc, uuid desc)
#: index name -> (collection, keys, options): what `pipelinejobs db init` creates
INDEXES: dict[str, tuple[str, list[tuple[str, int]], dict[str, Any]]] = {
    "jobs.uuid_unique": ("jobs", [("uuid", 1)], {"unique": True}),
    "jobs.updated": ("jobs", [("updated", -1)], {}),
    # the read API: one index per list filter, each ending in the list's order
    "jobs.created_uuid": ("jobs", [(CREATED, -1), ("uuid", -1)], {}),
    "jobs.state_created": ("jobs", [("state", 1), (CREATED, -1), ("uuid", -1)], {}),
    "jobs.pipeline_created": ("jobs", [("pipeline_uuid", 1), (CREATED, -1), ("uuid", -1)], {}),
    "jobs.session_created": ("jobs", [("session", 1), (CREATED, -1), ("uuid", -1)], {}),
    "jobs.child_of_created": ("jobs", [("child_of", 1), (CREATED, -1), ("uuid", -1)], {}),
    "jobs.archive_path": ("jobs", [("archive_path", 1)], {}),
    "pipelines.uuid_unique": ("pipelines", [("uuid", 1)], {"unique": True}),
    "pipelines.id_unique": ("pipelines", [("id", 1)], {"unique": True}),
    "updates.uuid": ("updates", [("uuid", 1)], {}),
    "events.uuid_seq_unique": ("events", [("uuid", 1), ("seq", 1), ("slot", 1)], {"unique": True}),
    "events.uuid_event_id_unique": (
        "events",
        [("uuid", 1), ("event_id", 1)],
        {"unique": True, "partialFilterExpression": {"event_id": {"$exists": True}}},
    ),
    # -- watch: deadlines, heartbeats, retention --
    "watch.uuid_unique": ("watch", [("uuid", 1)], {"unique": True}),
    "watch.due_at": ("watch", [("due_at", 1)], {}),
    "jobs.state_updated": ("jobs", [("state", 1), ("updated", 1)], {}),
    "jobs.hidden_updated": ("jobs", [("updated", 1)], {"partialFilterExpression": {"_visible": False}}),
    # purge tombstones carry expires_at; MongoDB's TTL monitor removes them then (other records lack the field)
    "updates.expires_at_ttl": ("updates", [("expires_at", 1)], {"expireAfterSeconds": 0}),
    # -- notifications: the outbox is fields of the log records still to be told of --
    # sparse, not partial: some MongoDB-wire servers (secantusd-py) only use a partial index for its own filter
    "events.notify_due": ("events", [("notify_due", 1)], {"sparse": True}),
    "subscriptions.id_unique": ("subscriptions", [("id", 1)], {"unique": True}),
    # a delivery document holds one pass's attempts (``rows``), listed under the jobs and subscriptions they name
    "deliveries.jobs_at": ("deliveries", [("jobs", 1), ("at", -1)], {}),
    "deliveries.subscriptions_at": ("deliveries", [("subscriptions", 1), ("at", -1)], {}),
    "deliveries.expires_at_ttl": ("deliveries", [("expires_at", 1)], {"expireAfterSeconds": 0}),
}
#: indexes of earlier versions that `db init` drops. `state` and `pipeline_uuid` are prefixes of the
#: (state|pipeline, created) indexes above, which answer the same queries; (state, pipeline) served the
#: metrics totals, which read every visible job anyway. Each index is one more entry a server may rewrite
#: on every event's job update (secantusd-py rewrites them all), so fewer is faster, not just smaller.
SUPERSEDED_INDEXES = {
    "jobs": ("state", "pipeline_uuid", "state_pipeline"),
    "deliveries": ("job_at", "subscription_at"),  # a document per attempt, before pass documents
}
_RETENTION_HEAD = {
    "_id": False,
    **dict.fromkeys(("uuid", "state", "pipeline_uuid", "updated", "_visible", "_properties", "_admin"), True),
}
#: what the event path relies on: the log's two unique keys (one listIndexes; `db init` makes all at once)
_EVENT_INDEXES = ("events.uuid_seq_unique", "events.uuid_event_id_unique")
_KNOWN_LOGGED = 10000  # job uuids remembered as having a log (a bounded LRU)


class _Abort(Exception):
    """Raised inside a transaction to roll it back when a precondition fails."""


@contextlib.contextmanager
def translate_errors(where: str = "MongoDB") -> Iterator[None]:
    """Turn driver failures into one clear, secret-free error naming the server (never the password)."""
    try:
        yield
    except DocumentTooLarge as exc:
        raise PipelineJobsError(
            ErrorKind.BAD_MESSAGE, "the document would exceed MongoDB's 16 MB limit; nothing was changed"
        ) from exc
    except ConnectionFailure as exc:
        raise PipelineJobsError(
            ErrorKind.STORAGE_UNAVAILABLE,
            f"{where} is unreachable ({type(exc).__name__}); nothing was changed",
        ) from exc
    except OperationFailure as exc:
        if exc.code in _TOO_LARGE:
            raise PipelineJobsError(
                ErrorKind.BAD_MESSAGE, "the document would exceed MongoDB's 16 MB limit; nothing was changed"
            ) from exc
        raise PipelineJobsError(
            ErrorKind.STORAGE_UNAVAILABLE,
            f"{where} refused the operation (code {exc.code}); nothing was changed",
        ) from exc
    except PyMongoError as exc:
        raise PipelineJobsError(
            ErrorKind.STORAGE_UNAVAILABLE, f"{where} error ({type(exc).__name__}); nothing was changed"
        ) from exc


def _retry_once(write: Callable[[], T]) -> T:
    """Run an idempotent write, once more after a network error (the first may or may not have landed)."""
    try:
        return write()
    except ConnectionFailure:
        return write()


def _pass_document(rows: list[Document]) -> Document:
    """One pass's delivery records as one document: one insert and a few index entries, not a document
    and three index entries per attempt (on a MongoDB-wire server that costs ~1 ms of CPU per statement,
    the difference is a twentieth of an event's cost). It expires with its last row."""
    return {
        "at": min(row["at"] for row in rows),
        "expires_at": max(row["expires_at"] for row in rows),
        "jobs": sorted({str(row["job_uuid"]) for row in rows if row.get("job_uuid") is not None}),
        "subscriptions": sorted({str(row["subscription"]) for row in rows}),
        "rows": [dict(row) for row in rows],
    }


def _at_revision(uuid: str, revision: int) -> dict[str, Any]:
    """The visible job, if it is still at ``revision`` (a job without one counts as revision 0)."""
    at = {"$in": [0, None]} if revision == 0 else revision
    return {"uuid": uuid, "_properties.revision": at, "_visible": {"$ne": False}}


def hosts_of(uri: str) -> str:
    """The host list of a MongoDB URI, without credentials or options."""
    return uri.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]


class MongoJobStore(SharedStore):
    backend = "mongodb"
    local = False

    def __init__(
        self,
        uri: str,
        database: str,
        *,
        server_selection_timeout_ms: int = 10000,
        write_concern: WriteConcern | None = None,
        history_window: int = DEFAULT_HISTORY_WINDOW,
        inline_data_bytes: int = DEFAULT_INLINE_DATA_BYTES,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        options: dict[str, Any] = {"tz_aware": True, "appname": "pipelinejobs-manager", **(client_options or {})}
        lowered = uri.lower()  # options given in the URI win over these defaults
        if "retrywrites" not in lowered:
            # the event path's writes are idempotent by construction and retried here (see _retry_once),
            # so they need no server-side retry bookkeeping, which costs a write of its own on some servers
            options["retryWrites"] = False
        if "serverselectiontimeoutms" not in lowered:
            options["serverSelectionTimeoutMS"] = server_selection_timeout_ms
        if "connecttimeoutms" not in lowered:
            options["connectTimeoutMS"] = server_selection_timeout_ms
        self.hosts = hosts_of(uri)
        self.database_name = database
        self._where = f"MongoDB at {self.hosts}"
        self._client: pymongo.MongoClient = pymongo.MongoClient(uri, **options)
        codec: CodecOptions = CodecOptions(tz_aware=True, tzinfo=timezone.utc)
        concern = write_concern or WriteConcern(w="majority", j=True)
        #: the catalog database, shared with serve's registry (one MongoClient per process)
        self.database = self._client.get_database(database, codec_options=codec, write_concern=concern)
        self.jobs = self.database["jobs"]
        self.pipelines = self.database["pipelines"]
        self.updates = self.database["updates"]
        self.events = self.database["events"]
        #: The first write of two: acknowledged by the primary, not waited on for the journal or a majority.
        #: Always followed by a write with the full concern, whose acknowledgement covers it (the journal
        #: and the oplog are sequential), so an event costs one durability wait, not two.
        self._events_first = (
            self.events.with_options(write_concern=WriteConcern(w=1)) if concern.acknowledged else self.events
        )
        self.watch = self.database["watch"]  # deadlines and heartbeats, apart from the datacatalog documents
        self.subscriptions = self.database["subscriptions"]  # notifications
        self.deliveries = self.database["deliveries"]
        self.leases = self.database["notify_leases"]  # which dispatcher holds the outbox, until when
        self.history_window = max(history_window, 1)
        self.inline_data_bytes = inline_data_bytes
        self._transactions: bool | None = None  # learnt on first use
        self._logged: OrderedDict[str, None] = OrderedDict()
        self._held: dict[str, tuple[datetime, datetime]] = {}  # dispatcher -> (lease taken at, held until)
        self._indexes_ok: set[str] = set()  # required indexes seen to exist (see _require_indexes)

    def __enter__(self) -> MongoJobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        return f"mongodb database '{self.database_name}' on {self.hosts}"

    # -- helpers ---------------------------------------------------------
    def _translate(self) -> contextlib.AbstractContextManager[None]:
        return translate_errors(self._where)

    def _atomically(self, work: Callable[[Any], T]) -> T:
        """Run ``work(session)`` in a transaction when the server has them, else plainly."""
        with self._translate():
            if self._transactions is not False:
                try:
                    with self._client.start_session() as session:
                        result = session.with_transaction(work)
                    self._transactions = True
                    return result
                except OperationFailure as exc:
                    if exc.code not in _NO_TRANSACTIONS and "Transaction numbers" not in str(exc):
                        raise
                    log.info("MongoDB has no transactions here; using ordered single-document writes")
                    self._transactions = False
            return work(None)

    def _apply_update(self, record: EventRecord) -> dict[str, Any]:
        """The job-document update that applies an applied record: idempotent given the revision precondition."""
        changes: dict[str, Any] = {
            "state": record.state,
            "last_event": record.name,
            "updated": record.date,
            "_properties.modified_date": record.date,
            "_properties.revision": record.seq,
        }
        entry = record.history_entry(self.inline_data_bytes)
        return {"$push": {"history": {"$each": [entry], "$slice": -self.history_window}}, "$set": changes}

    def _insert_record(self, record: EventRecord) -> Any:
        """Insert a log record, retrying once after a network error; a retry that finds its own record succeeds.

        The insert is the first of the event's two writes (``_events_first``): the caller's next write,
        the job update (or the record's removal), carries the full write concern for both.
        """
        doc = record.to_document()
        if record.notify:  # the outbox rides on the record: logged, and so due, in the same insert
            from .outbox import outbox_fields

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

    def _roll_forward(self, uuid: str, revision: int) -> None:
        """Apply the record that holds seq ``revision + 1`` if the document does not show it yet."""
        found = self.events.find_one({"uuid": uuid, "seq": revision + 1, "slot": ""}, {"_id": False})
        if found is not None:
            self._apply_logged(EventRecord.from_document(found))

    def _apply_logged(self, record: EventRecord) -> None:
        """Apply a logged record to the job if the document is still one revision behind it (full write concern)."""
        self.jobs.update_one(_at_revision(record.uuid, record.seq - 1), self._apply_update(record))

    # -- protocol --------------------------------------------------------
    def ensure_indexes(self) -> None:
        with self._translate():  # one round trip per collection; existing indexes are kept
            by_collection: dict[str, list[IndexModel]] = {}
            for name, (collection, keys, options) in INDEXES.items():
                index = IndexModel(keys, name=name.split(".", 1)[1], **options)
                by_collection.setdefault(collection, []).append(index)
            for collection, models in by_collection.items():
                self.database[collection].create_indexes(models)
            for collection, names in SUPERSEDED_INDEXES.items():
                present = set(self.database[collection].index_information())
                for name in present.intersection(names):
                    self.database[collection].drop_index(name)
                    log.info("dropped index %s.%s of an earlier version: no query needs it now", collection, name)
            self._regroup_deliveries()
        self._indexes_ok.update(INDEXES)

    def _regroup_deliveries(self) -> None:
        """Delivery records of an earlier version, a document per attempt, become one-row pass documents."""
        earlier = list(self.deliveries.find({"rows": {"$exists": False}}))
        if earlier:
            self.deliveries.bulk_write(
                [pymongo.ReplaceOne({"_id": doc.pop("_id")}, _pass_document([doc])) for doc in earlier],
                ordered=False,
            )
            log.info("regrouped %d delivery records of an earlier version", len(earlier))

    def missing_indexes(self) -> list[str]:
        return self._absent(list(INDEXES))

    def _absent(self, names: list[str]) -> list[str]:
        """Which of the named indexes (``collection.index``) do not exist: one listIndexes per collection."""
        with self._translate():
            present = {
                collection: set(self.database[collection].index_information())
                for collection in {INDEXES[name][0] for name in names}
            }
        return [name for name in names if name.split(".", 1)[1] not in present[INDEXES[name][0]]]

    def _require_indexes(self, *names: str) -> None:
        """CONFIGURATION unless the named indexes exist: a catalog `pipelinejobs db init` never prepared is
        reported as that, rather than run unindexed and without the log's unique keys.

        Checked once per store object (a round trip per collection), not with index hints on every read:
        some MongoDB-wire servers (secantusd-py 0.7) scan the whole collection when a query names a hint.
        """
        unchecked = [name for name in names if name not in self._indexes_ok]
        if not unchecked:
            return
        missing = self._absent(unchecked)
        if missing:
            raise PipelineJobsError(
                ErrorKind.CONFIGURATION,
                f"the catalog database has no index {', '.join(missing)}: run `pipelinejobs db init` once;"
                " nothing was changed",
                missing_index=missing[0],
            )
        self._indexes_ok.update(unchecked)

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

    def close(self) -> None:
        self._client.close()

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
        from .outbox import OutboxItem

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
        from .outbox import EventFate

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
        from .outbox import EventFate

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

    # -- read side (the read API and metrics) -----------------
    def query_jobs(self, where: JobFilter, *, after: str | None = None, limit: int = 50) -> JobPage:
        """After a cursor (created c, uuid u): the jobs created at c with a smaller uuid, then those created before c.

        Two plain index range scans rather than one ``$or``, which some planners cannot bound by the index.
        """
        query = job_query(where)
        position = parse_job_cursor(after)
        limit = max(1, limit)
        order = [(CREATED, -1), ("uuid", -1)]
        with self._translate():
            rows: list[Document] = []
            if position is not None:
                created, uuid = position
                tied = {**_created_within(query, {"$gte": created, "$lte": created}), "uuid": {"$lt": uuid}}
                rows = [_summary(d) for d in self.jobs.find(tied, _SUMMARY_PROJECTION).sort(order).limit(limit + 1)]
                query = _created_within(query, {"$lt": created})
            if len(rows) <= limit:
                cursor = self.jobs.find(query, _SUMMARY_PROJECTION).sort(order).limit(limit + 1 - len(rows))
                rows += [_summary(doc) for doc in cursor]
        return page_of_jobs(rows, limit)

    def count_jobs(self, where: JobFilter) -> dict[str, int]:
        pipeline = [{"$match": job_query(where)}, {"$group": {"_id": "$state", "n": {"$sum": 1}}}]
        with self._translate():
            return {str(row["_id"]): int(row["n"]) for row in self.jobs.aggregate(pipeline)}

    def job_totals(self) -> dict[tuple[str, str], int]:
        group = {"_id": {"s": "$state", "p": "$pipeline_uuid"}, "n": {"$sum": 1}}
        pipeline: list[dict[str, Any]] = [{"$match": {"_visible": {"$ne": False}}}, {"$group": group}]
        with self._translate():
            rows = list(self.jobs.aggregate(pipeline))
        return {(str(r["_id"].get("s")), str(r["_id"].get("p"))): int(r["n"]) for r in rows}

    def waiting_for_server(self) -> bool:
        return not self._client.topology_description.has_writable_server()

    def ping(self, timeout: float = 2.0) -> None:
        with self._translate(), pymongo.timeout(timeout):
            self.database.command("ping")

    # -- workflow engines' reports ------------------------------------------------------------------
    def set_progress(self, uuid: str, changes: Document) -> bool:
        """One ``update_one``: ``$set`` for values, ``$unset`` for None, on paths under ``progress``."""
        paths = {"progress." + ".".join(progress_path(key)): value for key, value in changes.items()}
        update: dict[str, Any] = {}
        setting = {path: value for path, value in paths.items() if value is not None}
        removing = {path: "" for path, value in paths.items() if value is None}
        if setting:
            update["$set"] = setting
        if removing:
            update["$unset"] = removing
        with self._translate():
            if not update:
                return self.jobs.find_one({"uuid": uuid}, {"_id": True}) is not None
            return self.jobs.update_one({"uuid": uuid}, update).matched_count == 1

    # -- job counts: one counter document, moved after each write that moves a job --------
    # ``job_counts`` holds {_id: "visible", v, counts: {state: {pipeline: n}}}. Without a transaction
    # the counters cannot change in the job's own write: they follow it (one ``w: 1`` update, only when
    # a job's state or visibility changes; for an event the event path calls ``count_move``), so a writer
    # that dies between the two or a job written by python-datacatalog leaves them off until the next
    # recount (serve: at start and every metrics.recount_seconds). Hide, remove and purge move them inside
    # their transaction when the server has transactions. ``v`` changes with every move: a recount
    # applies only if it did not.
    @functools.cached_property
    def _counts(self) -> Any:
        """The counter document's collection; moves are acknowledged by the primary, never waited on for
        the journal: the counts are derived data that a recount restores."""
        return self.database["job_counts"].with_options(write_concern=WriteConcern(w=1))

    def _count_moves(self, before: Document | None, after: Document | None, session: Any = None) -> None:
        """Take a job out of ``before``'s (state, pipeline) and into ``after``'s, each if it is visible."""
        moves: dict[str, int] = {}
        for doc, step in ((before, -1), (after, 1)):
            if doc is not None and doc.get("_visible") is not False:
                path = f"counts.{_count_key(doc.get('state'))}.{_count_key(doc.get('pipeline_uuid'))}"
                moves[path] = moves.get(path, 0) + step
        moves = {path: step for path, step in moves.items() if step}
        if not moves:
            return
        update = {"$inc": {**moves, "v": 1}}
        try:
            try:
                self._counts.update_one({"_id": _COUNTS_ID}, update, upsert=True, session=session)
            except DuplicateKeyError:  # two first moves raced to create the document: it exists now
                self._counts.update_one({"_id": _COUNTS_ID}, update, session=session)
        except PyMongoError:
            if session is not None:
                raise  # inside a transaction the job's write and the counts go together, or neither does
            self._counts_unsure("the counter update failed")

    def count_move(self, pipeline_uuid: str | None, from_state: str, to_state: str) -> None:
        """An event the caller appended moved a visible job between states (the event path tells the store:
        its job update is conditional on the revision only, so the store does not learn the state it left)."""
        self._count_moves(
            {"state": from_state, "pipeline_uuid": pipeline_uuid}, {"state": to_state, "pipeline_uuid": pipeline_uuid}
        )

    def _counts_unsure(self, why: str) -> None:
        log.warning("job counts for /metrics may be off by one (%s); serve's next recount repairs them", why)

    def job_counts(self, timeout: float = 2.0) -> dict[tuple[str, str], int]:
        with self._translate(), pymongo.timeout(timeout):
            doc = self._counts.find_one({"_id": _COUNTS_ID}, {"counts": True})
        return _decode_counts((doc or {}).get("counts"))

    def recount_jobs(self, *, settle: float | None = None, wait: Callable[[float], Any] = time.sleep) -> Recount:
        """Count the visible jobs (one aggregate, a collection scan on some servers) and set the counters
        to it, compare-and-set on ``v``: a move during the count leaves them as they are (``applied`` False).

        A job's update and its counters' move are two writes: one whose update the count saw but whose move
        had not landed yet would be counted twice once the move lands. So the recount waits ``settle``
        seconds (None: ``RECOUNT_SETTLE_SECONDS``) after counting before its compare-and-set: such a move
        bumps ``v`` meanwhile and the recount is not applied. Only a writer stalled longer than that between
        its two writes is counted twice, until the next recount, as one that died there is missed until then.
        """
        started = time.monotonic()
        with self._translate():
            doc = self._counts.find_one({"_id": _COUNTS_ID})
            actual = self.job_totals()
            if wait(RECOUNT_SETTLE_SECONDS if settle is None else settle):  # stopping: abandoned
                return Recount(False, {}, time.monotonic() - started)
            counted = _decode_counts((doc or {}).get("counts"))
            fixes = count_corrections(counted, actual)
            counts: dict[str, dict[str, int]] = {}
            for (state, pipeline), n in {**dict.fromkeys(counted, 0), **actual}.items():
                counts.setdefault(_label_key(state), {})[_label_key(pipeline)] = n
            stamp = datetime.now(timezone.utc)
            if doc is None:
                try:
                    self._counts.insert_one({"_id": _COUNTS_ID, "v": 0, "counts": counts, "recounted": stamp})
                    applied = True
                except DuplicateKeyError:  # a job moved meanwhile and made the document
                    applied = False
            else:
                written = self._counts.update_one(
                    {"_id": _COUNTS_ID, "v": doc.get("v", 0)},
                    {"$set": {"counts": counts, "recounted": stamp}, "$inc": {"v": 1}},
                )
                applied = written.matched_count == 1
        return Recount(applied, fixes if applied else {}, time.monotonic() - started)

    def record_task(self, record: EventRecord, progress: Document) -> AppendResult:
        """The record first (the truth, and the delivery id's check; see :meth:`record_stale`), then the
        summary: two writes."""
        logged = self.record_stale(record)
        if logged.status is Append.APPLIED and progress:
            self.set_progress(record.uuid, progress)
        return logged


_SUMMARY_PROJECTION = {"_id": False, **dict.fromkeys(JOB_SUMMARY_PATHS.values(), True)}


def job_query(where: JobFilter) -> dict[str, Any]:
    """The MongoDB filter for ``where``; each field is the head of an index in :data:`INDEXES`."""
    import re

    query: dict[str, Any] = {}
    if where.states:
        query["state"] = where.states[0] if len(where.states) == 1 else {"$in": list(where.states)}
    for name in ("pipeline_uuid", "session", "child_of"):
        value = getattr(where, name)
        if value is not None:
            query[name] = value  # child_of is an array: equality means "contains"
    if where.archive_path:
        query["archive_path"] = {"$regex": re.escape(where.archive_path)}
    for column, low, high in (
        (CREATED, where.created_after, where.created_before),
        ("updated", where.updated_after, where.updated_before),
    ):
        bounds = {op: v for op, v in (("$gte", low), ("$lt", high)) if v is not None}
        if bounds:
            query[column] = bounds
    if not where.include_hidden:
        query["_visible"] = {"$ne": False}
    return query


def _created_within(query: dict[str, Any], bounds: dict[str, Any]) -> dict[str, Any]:
    """``query`` with its creation-time range narrowed by ``bounds``: one flat filter, so the index bounds it."""
    merged = dict(query.get(CREATED) or {})
    for op, moment in bounds.items():
        if op not in merged:
            merged[op] = moment
        else:
            merged[op] = max(merged[op], moment) if op in ("$gte", "$gt") else min(merged[op], moment)
    return {**query, CREATED: merged}


def _summary(doc: Document) -> Document:
    """A projected job document as the flat summary a list shows."""
    values = {}
    for name, path in JOB_SUMMARY_PATHS.items():
        value: Any = doc
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        values[name] = value
    return job_summary(values)


# -- job counts -----------------------------------------------------------------------------
_COUNTS_ID = "visible"
RECOUNT_SETTLE_SECONDS = 3.0  # between a recount's count and its compare-and-set (see recount_jobs)
_COUNTED = {"_id": False, "state": True, "pipeline_uuid": True, "_visible": True}  # what moves a job's count
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,200}")


def _count_key(value: Any) -> str:
    """A state or pipeline as a field name of the counter document: plain names as they are, anything that
    could be read as a path or an operator (``.``, ``$``) hex-encoded behind ``~``; null is ``~``."""
    if value is None:
        return "~"
    text = str(value)
    return text if _PLAIN_KEY.fullmatch(text) else "~" + text.encode().hex()


def _label_key(label: str) -> str:
    """A /metrics label back as a field name (``job_totals`` labels a null state or pipeline "None")."""
    return "~" if label == "None" else _count_key(label)


def _count_label(key: str) -> str:
    if key == "~":
        return "None"
    if key.startswith("~"):
        try:
            return bytes.fromhex(key[1:]).decode()
        except ValueError:
            return key
    return key


def _decode_counts(counts: Any) -> dict[tuple[str, str], int]:
    if not isinstance(counts, dict):
        return {}
    return {
        (_count_label(state), _count_label(pipeline)): int(n)
        for state, by_pipeline in counts.items()
        if isinstance(by_pipeline, dict)
        for pipeline, n in by_pipeline.items()
        if isinstance(n, int | float)
    }
