"""The read side: the job list and counts (the read API and /metrics), engines' progress reports, job counts."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pymongo
from pymongo.errors import (
    DuplicateKeyError,
)

from ..listing import (
    JOB_SUMMARY_PATHS,
    JobFilter,
    JobPage,
    Recount,
    count_corrections,
    job_summary,
    page_of_jobs,
    parse_job_cursor,
)
from ..records import (
    Append,
    AppendResult,
    Document,
    EventRecord,
    progress_path,
)
from .base import MongoBase
from .counts import _COUNTS_ID, RECOUNT_SETTLE_SECONDS, _decode_counts, _label_key
from .schema import CREATED


class MongoReads(MongoBase):
    """The read API and metrics, engines' progress reports, and the job counts."""

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

    # -- job counts: the counter document (see MongoBase._counts) --------
    def count_move(self, pipeline_uuid: str | None, from_state: str, to_state: str) -> None:
        """An event the caller appended moved a visible job between states (the event path tells the store:
        its job update is conditional on the revision only, so the store does not learn the state it left)."""
        self._count_moves(
            {"state": from_state, "pipeline_uuid": pipeline_uuid}, {"state": to_state, "pipeline_uuid": pipeline_uuid}
        )

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
