"""The MongoDB backend (pymongo), on the collections datacatalog uses: jobs, pipelines, updates."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator
from datetime import datetime, timezone
from typing import Any, TypeVar

import pymongo
from bson.codec_options import CodecOptions
from pymongo import IndexModel, ReturnDocument
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)

from ..errors import ErrorKind, PipelineJobsError
from ..logs import get_logger
from .base import Document

log = get_logger("store.mongo")
T = TypeVar("T")

_NO_TRANSACTIONS = {20, 263}  # IllegalOperation (standalone), OperationNotSupportedInTransaction


class _Abort(Exception):
    """Raised inside a transaction to roll it back when a precondition fails."""


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver failures into one clear, secret-free error."""
    try:
        yield
    except ConnectionFailure as exc:
        raise PipelineJobsError(
            ErrorKind.STORAGE_UNAVAILABLE,
            f"MongoDB is unreachable ({type(exc).__name__}); nothing was changed",
        ) from exc
    except OperationFailure as exc:
        raise PipelineJobsError(
            ErrorKind.STORAGE_UNAVAILABLE,
            f"MongoDB refused the operation (code {exc.code}); nothing was changed",
        ) from exc
    except PyMongoError as exc:
        raise PipelineJobsError(
            ErrorKind.STORAGE_UNAVAILABLE, f"MongoDB error ({type(exc).__name__}); nothing was changed"
        ) from exc


class MongoJobStore:
    backend = "mongodb"

    def __init__(self, uri: str, database: str, *, server_selection_timeout_ms: int = 10000) -> None:
        options: dict[str, Any] = {"tz_aware": True, "retryWrites": True, "appname": "pipelinejobs-manager"}
        lowered = uri.lower()  # timeouts given in the URI win over the configured ones
        if "serverselectiontimeoutms" not in lowered:
            options["serverSelectionTimeoutMS"] = server_selection_timeout_ms
        if "connecttimeoutms" not in lowered:
            options["connectTimeoutMS"] = server_selection_timeout_ms
        self._client: pymongo.MongoClient = pymongo.MongoClient(uri, **options)
        codec = CodecOptions(tz_aware=True, tzinfo=timezone.utc)
        db = self._client.get_database(database, codec_options=codec)
        self.jobs = db["jobs"]
        self.pipelines = db["pipelines"]
        self.updates = db["updates"]
        self._transactions: bool | None = None  # learnt on first use

    # -- helpers ---------------------------------------------------------
    def _atomically(self, work: Callable[[Any], T]) -> T:
        """Run ``work(session)`` in a transaction when the server has them, else plainly."""
        with translate_errors():
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

    # -- protocol --------------------------------------------------------
    def ensure_indexes(self) -> None:
        with translate_errors():  # one round trip per collection; existing indexes are kept
            self.jobs.create_indexes(
                [
                    IndexModel("uuid", unique=True, name="uuid_unique"),
                    IndexModel("state", name="state"),
                    IndexModel("pipeline_uuid", name="pipeline_uuid"),
                ]
            )
            self.pipelines.create_indexes(
                [IndexModel("uuid", unique=True, name="uuid_unique"), IndexModel("id", unique=True, name="id_unique")]
            )
            self.updates.create_indexes([IndexModel("uuid", name="uuid")])

    def find_pipeline(self, uuid: str) -> Document | None:
        with translate_errors():
            return self.pipelines.find_one({"uuid": uuid}, {"_id": False})

    def save_pipeline(self, pipeline: Document) -> tuple[Document, bool]:
        with translate_errors():
            try:
                self.pipelines.insert_one(dict(pipeline))
                return dict(pipeline), True
            except DuplicateKeyError:
                existing = self.pipelines.find_one(
                    {"$or": [{"uuid": pipeline["uuid"]}, {"id": pipeline.get("id")}]}, {"_id": False}
                )
                return existing or dict(pipeline), False

    def find_job(self, uuid: str) -> Document | None:
        with translate_errors():
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
        with translate_errors():
            cursor = self.jobs.find(query, {"_id": False}).sort("updated", pymongo.DESCENDING).limit(limit)
            return list(cursor)

    def insert_job(self, job: Document, audit: Document) -> tuple[Document, bool]:
        def work(session: Any) -> tuple[Document, bool]:
            self.jobs.insert_one(dict(job), session=session)
            self.updates.insert_one(dict(audit), session=session)
            return job, True

        try:
            return self._atomically(work)
        except PipelineJobsError as exc:
            if not isinstance(exc.__cause__, DuplicateKeyError):
                raise
        existing = self.find_job(job["uuid"])
        if existing is None:  # removed between the two statements; report, do not guess
            raise PipelineJobsError(ErrorKind.CONFLICT, f"job {job['uuid']} changed while being created; retry")
        return existing, False

    def apply_event(
        self,
        uuid: str,
        *,
        from_states: Collection[str] | None,
        entry: Document,
        new_state: str | None,
        now: datetime,
        audit: Document,
    ) -> Document | None:
        query: dict[str, Any] = {"uuid": uuid, "_visible": {"$ne": False}}
        if from_states is not None:
            query["state"] = {"$in": sorted(from_states)}
        changes: dict[str, Any] = {"last_event": entry["name"], "updated": now, "_properties.modified_date": now}
        if new_state is not None:
            changes["state"] = new_state
        update = {"$push": {"history": entry}, "$set": changes, "$inc": {"_properties.revision": 1}}

        def work(session: Any) -> Document | None:
            doc = self.jobs.find_one_and_update(
                query, update, projection={"_id": False}, return_document=ReturnDocument.AFTER, session=session
            )
            if doc is not None:
                self.updates.insert_one(dict(audit), session=session)
            return doc

        return self._atomically(work)

    def hide_job(self, uuid: str, *, now: datetime, audit: Document) -> Document | None:
        update = {
            "$set": {"_visible": False, "updated": now, "_properties.modified_date": now},
            "$inc": {"_properties.revision": 1},
        }

        def work(session: Any) -> Document | None:
            doc = self.jobs.find_one_and_update(
                {"uuid": uuid, "_visible": {"$ne": False}},
                update,
                projection={"_id": False},
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            if doc is not None:
                self.updates.insert_one(dict(audit), session=session)
            return doc

        return self._atomically(work)

    def remove_job(self, uuid: str, *, expected_revision: int, tombstone: Document) -> bool:
        precondition = {"uuid": uuid, "_properties.revision": expected_revision}

        def work(session: Any) -> bool:
            written = self.updates.insert_one(dict(tombstone), session=session)
            if self.jobs.delete_one(precondition, session=session).deleted_count == 1:
                return True
            if session is not None:
                raise _Abort()
            self.updates.delete_one({"_id": written.inserted_id})  # no transactions: undo by hand
            return False

        try:
            return self._atomically(work)
        except _Abort:
            return False

    def close(self) -> None:
        self._client.close()
