"""The MongoDB store's foundation: the client and collections, error translation, transactions, the indexes'
checks, and the steps shared by several concerns, which the mixins of :class:`MongoJobStore` build on.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any, TypeVar

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

from ...errors import ErrorKind, PipelineJobsError
from ...logs import get_logger
from ..records import (
    DEFAULT_HISTORY_WINDOW,
    DEFAULT_INLINE_DATA_BYTES,
    Document,
    EventRecord,
)
from ..shared import SharedStore
from .counts import _COUNTS_ID, _count_key
from .schema import INDEXES, SUPERSEDED_INDEXES, _pass_document

log = get_logger("store.mongo")
T = TypeVar("T")

_NO_TRANSACTIONS = {20, 263}  # IllegalOperation (standalone), OperationNotSupportedInTransaction
_TOO_LARGE = {10334, 17419, 17420}  # BSONObjectTooLarge and friends


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


def _at_revision(uuid: str, revision: int) -> dict[str, Any]:
    """The visible job, if it is still at ``revision`` (a job without one counts as revision 0)."""
    at = {"$in": [0, None]} if revision == 0 else revision
    return {"uuid": uuid, "_properties.revision": at, "_visible": {"$ne": False}}


def hosts_of(uri: str) -> str:
    """The host list of a MongoDB URI, without credentials or options."""
    return uri.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]


class MongoBase(SharedStore):
    """The client, the collections and transactions, error translation, indexes, rolling a logged record
    forward, and the job counts' moves: what every concern's methods write and read through."""

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

    def close(self) -> None:
        self._client.close()

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

    def _counts_unsure(self, why: str) -> None:
        log.warning("job counts for /metrics may be off by one (%s); serve's next recount repairs them", why)
