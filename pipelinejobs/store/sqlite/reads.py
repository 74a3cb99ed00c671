"""The read side: the job list and counts (the read API and /metrics), engines' progress reports, job counts."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ...errors import ErrorKind, PipelineJobsError
from ..listing import (
    JOB_SUMMARY_FIELDS,
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
from .base import SqliteBase
from .encoding import _moment, _record_row, _tagged, _timestamp, _utc
from .eventlog import _log_rows
from .schema import _ARCHIVE_PATH, _COUNT_KEY, _CREATED, _SESSION


class SqliteReads(SqliteBase):
    """The read API and metrics, engines' progress reports, and the job counts."""

    # -- read side (the read API and metrics) -----------------
    def query_jobs(self, where: JobFilter, *, after: str | None = None, limit: int = 50) -> JobPage:
        sql, params = list_sql(where, parse_job_cursor(after), max(1, limit) + 1)
        with self._reading() as conn:
            rows = conn.execute(sql, params).fetchall()
        return page_of_jobs([_summary(row) for row in rows], max(1, limit))

    def count_jobs(self, where: JobFilter) -> dict[str, int]:
        clauses, params = _job_where(where)
        sql = f"SELECT state, COUNT(*) FROM jobs WHERE {' AND '.join(clauses)} GROUP BY state"
        with self._reading() as conn:
            return {str(state): int(n) for state, n in conn.execute(sql, tuple(params))}

    def job_totals(self) -> dict[tuple[str, str], int]:
        sql = "SELECT state, pipeline_uuid, COUNT(*) FROM jobs WHERE visible = 1 GROUP BY state, pipeline_uuid"
        with self._reading() as conn:
            return {(str(state), str(pipeline)): int(n) for state, pipeline, n in conn.execute(sql)}

    def waiting_for_server(self) -> bool:
        return False  # a local file: nothing to wait for

    def ping(self, timeout: float = 2.0) -> None:
        if not self.path.exists():
            raise PipelineJobsError(ErrorKind.STORAGE_UNAVAILABLE, f"the SQLite store {self.path} is gone")
        with self._reading() as conn:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()

    # -- workflow engines' reports ------------------------------------------------------------------
    def set_progress(self, uuid: str, changes: Document) -> bool:
        """One ``UPDATE`` of the stored document: ``json_set`` for values, ``json_remove`` for None."""
        with self._transaction() as conn:
            return _set_progress(conn, uuid, changes)

    def record_task(self, record: EventRecord, progress: Document) -> AppendResult:
        """The log row and the summary's ``UPDATE`` in one transaction: one commit, one sync."""
        row = _record_row(record)
        with self._transaction() as conn:
            try:
                _log_rows(conn, [row])
            except sqlite3.IntegrityError:
                existing = self._delivery(conn, record.uuid, record.event_id)
                if existing is None:
                    raise
                return AppendResult(Append.REPLAYED, existing)
            if progress:
                _set_progress(conn, record.uuid, progress)
            return AppendResult(Append.APPLIED)

    # -- job counts: kept by the ``job_counts`` triggers, in every writing transaction -----
    def count_move(self, pipeline_uuid: str | None, from_state: str, to_state: str) -> None:
        """Nothing to do: the triggers moved the counts in the event's own transaction."""

    def job_counts(self, timeout: float = 2.0) -> dict[tuple[str, str], int]:
        with self._reading() as conn:
            rows = conn.execute("SELECT state, pipeline, n FROM job_counts").fetchall()
        return {_count_label(state, pipeline): int(n) for state, pipeline, n in rows}

    def recount_jobs(self, *, settle: float | None = None, wait: Callable[[float], Any] = time.sleep) -> Recount:
        """Exact, in one write transaction (``settle`` and ``wait`` are MongoDB's; nothing moves here meanwhile): the
        triggers leave nothing to repair unless someone wrote the file without them."""
        started = time.monotonic()
        with self._transaction() as conn:
            counted = {(s, p): n for s, p, n in conn.execute("SELECT state, pipeline, n FROM job_counts")}
            actual_sql = f"SELECT {_COUNT_KEY.format(row='jobs')}, COUNT(*) FROM jobs WHERE visible = 1 GROUP BY 1, 2"
            actual = {(s, p): n for s, p, n in conn.execute(actual_sql)}
            fixes = count_corrections(counted, actual)
            conn.executemany(
                "INSERT INTO job_counts (state, pipeline, n) VALUES (?, ?, ?)"
                " ON CONFLICT (state, pipeline) DO UPDATE SET n = excluded.n",
                [(state, pipeline, actual.get((state, pipeline), 0)) for state, pipeline in fixes],
            )
        shown = {_count_label(*key): change for key, change in fixes.items()}
        return Recount(True, shown, time.monotonic() - started)


def _count_label(state: str, pipeline: str) -> tuple[str, str]:
    """A ``job_counts`` key as /metrics labels it: '' stands for null, shown "None" as ``job_totals`` shows it."""
    return (state or "None", pipeline or "None")


def list_sql(where: JobFilter, position: tuple[datetime, str] | None, limit: int) -> tuple[str, tuple[Any, ...]]:
    """The job list's query: summaries matching ``where`` after ``position``, by (created desc, uuid desc)."""
    clauses, params = _job_where(where)
    if position is not None:
        created, uuid = position
        clauses.append(f"({_CREATED} < ? OR ({_CREATED} = ? AND uuid < ?))")
        params += [_iso(created), _iso(created), uuid]
    sql = (
        f"SELECT {_SUMMARY_COLUMNS} FROM jobs WHERE {' AND '.join(clauses)} ORDER BY {_CREATED} DESC, uuid DESC LIMIT ?"
    )
    return sql, (*params, limit)


def _iso(moment: datetime) -> str:
    """A time as the ISO text the stored documents hold (UTC, ``+00:00``): compares as time does."""
    return _utc(moment).isoformat()


def _job_where(where: JobFilter) -> tuple[list[str], list[Any]]:
    """SQL conditions for ``where``; each uses an index of the read API (see ``_SCHEMA``)."""
    clauses: list[str] = ["1 = 1"]
    params: list[Any] = []
    if where.states:
        clauses.append(f"state IN ({', '.join('?' * len(where.states))})")
        params += list(where.states)
    if where.pipeline_uuid is not None:
        clauses.append("pipeline_uuid = ?")
        params.append(where.pipeline_uuid)
    if where.session is not None:
        clauses.append(f"{_SESSION} = ?")
        params.append(where.session)
    if where.child_of is not None:
        clauses.append("uuid IN (SELECT uuid FROM job_parents WHERE parent = ?)")
        params.append(where.child_of)
    if where.archive_path:
        clauses.append(f"instr({_ARCHIVE_PATH}, ?) > 0")
        params.append(where.archive_path)
    if where.created_after is not None:
        clauses.append(f"{_CREATED} >= ?")
        params.append(_iso(where.created_after))
    if where.created_before is not None:
        clauses.append(f"{_CREATED} < ?")
        params.append(_iso(where.created_before))
    if where.updated_after is not None:
        clauses.append("updated >= ?")
        params.append(_timestamp(where.updated_after))
    if where.updated_before is not None:
        clauses.append("updated < ?")
        params.append(_timestamp(where.updated_before))
    if not where.include_hidden:
        clauses.append("visible = 1")
    return clauses, params


#: how SQLite reads each summary field: a column where the store keeps one, else the stored document's field
_SUMMARY_SQL = {
    name: {
        "uuid": "uuid",
        "state": "state",
        "pipeline_uuid": "pipeline_uuid",
        "last_event": "last_event",
        "created": _CREATED,
        "updated": "updated",
        "revision": "revision",
        "visible": "visible",
    }.get(name, f"json_extract(doc, '$.{path}')")
    for name, path in JOB_SUMMARY_PATHS.items()
}
_SUMMARY_COLUMNS = ", ".join(_SUMMARY_SQL.values())
#: the columns whose SQLite value is not the field's value (JSON text, ISO text, a timestamp, 0/1)
_FROM_SQL: dict[str, Any] = {
    "child_of": lambda text: json.loads(text) if text and text != "[]" else [],  # json.loads costs ~1 us
    "created": lambda text: datetime.fromisoformat(text) if text else None,  # dumps_document's UTC text
    "updated": _moment,
    "visible": bool,
}


def _summary(row: tuple[Any, ...]) -> Document:
    """A list row as the job's summary; called 50 times a page, so only the conversions it needs."""
    values = dict(zip(JOB_SUMMARY_FIELDS, row, strict=True))
    for name, convert in _FROM_SQL.items():
        values[name] = convert(values[name])
    return job_summary(values)


# -- workflow engines' reports ------------------------------------------------------------------
def _set_progress(conn: sqlite3.Connection, uuid: str, changes: Document) -> bool:
    """``set_progress`` inside a transaction: one ``UPDATE`` of the job's stored document."""
    setting = [(_json_path(key), json.dumps(_tagged(value))) for key, value in changes.items() if value is not None]
    removing = [_json_path(key) for key, value in changes.items() if value is None]
    expression, params = "doc", list[Any]()
    if setting:
        expression = f"json_set({expression}{', ?, json(?)' * len(setting)})"
        params += [item for pair in setting for item in pair]
    if removing:
        expression = f"json_remove({expression}{', ?' * len(removing)})"
        params += removing
    return bool(conn.execute(f"UPDATE jobs SET doc = {expression} WHERE uuid = ?", (*params, uuid)).rowcount)


def _json_path(key: str) -> str:
    """A ``progress`` key as an SQLite JSON path: ``failed.12`` -> ``$.progress."failed"."12"``."""
    return "$.progress" + "".join(f'."{segment}"' for segment in progress_path(key))
