"""What people can read about the jobs, as plain JSON-ready data: the read API's query layer.

Serve's JSON routes (``server/read.py``) and any HTML view call these functions;
nothing here knows about HTTP or authentication. Request parameters come in as
a mapping of strings and are checked here (:class:`QueryError` says what is
wrong, never echoing more than a short prefix of the input). A job is never shown
with its ``_salt`` (the job token is derived from it) nor its storage id, and
lists show summaries only (``JOB_SUMMARY_FIELDS``), never ``data`` or ``history``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import date, datetime, timezone
from typing import Any

from . import fsm
from .bundled_schemas import SCHEMA_FILES, schema_dir
from .jsontext import dumps_utf8
from .store.base import JobStore
from .store.listing import JobFilter
from .store.records import EventRecord

DEFAULT_PAGE = 50
MAX_PAGE = 500
#: parameters of a job list (also what the counts take)
FILTER_PARAMS = (
    "state",
    "pipeline",
    "session",
    "child_of",
    "archive_path",
    "created_after",
    "created_before",
    "updated_after",
    "updated_before",
    "hidden",
)
TIME_PARAMS = ("created_after", "created_before", "updated_after", "updated_before")
_STATES = {s.value for s in fsm.State}
_HIDDEN_FIELDS = ("_salt", "_id")


class QueryError(ValueError):
    """A parameter that cannot be used; the message says which and why."""


def _short(text: str) -> str:
    return text if len(text) <= 64 else text[:64] + "..."


# -- JSON -------------------------------------------------------------------------------------
_PLAIN = (str, int, bool, type(None))  # most values of a summary: returned as they are, tested first


def jsonable(value: Any) -> Any:
    """``value`` with datetimes as ISO 8601 UTC text (``Z``) and non-finite floats as null."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)  # ObjectId, Decimal128...: shown as text


# -- parameters -------------------------------------------------------------------------------
def parse_time(name: str, raw: str) -> datetime:
    """An ISO 8601 time (``Z`` or an offset; a time without one is UTC)."""
    text = raw.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(f"{name} must be an ISO 8601 time, e.g. 2024-05-01T12:00:00Z; got {_short(raw)!r}") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def parse_limit(raw: str | None, default: int = DEFAULT_PAGE, maximum: int = MAX_PAGE) -> int:
    """A page size: 1..``maximum`` (larger values are capped)."""
    if raw is None or raw == "":
        return default
    text = raw.strip()
    # ASCII digits only: str.isdigit also takes "²" or "٣", which int() refuses (a 500, not a 400)
    if not (text.isascii() and text.isdigit()) or int(text[:7]) < 1:
        raise QueryError(f"limit must be a positive integer; got {_short(raw)!r}")
    return min(int(text[:7]), maximum)


def _flag(name: str, raw: str | None) -> bool:
    value = (raw or "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise QueryError(f"{name} must be true or false; got {_short(raw or '')!r}")


def parse_job_filter(params: Mapping[str, str]) -> JobFilter:
    """A :class:`JobFilter` from request parameters (:data:`FILTER_PARAMS`); unknown names are ignored.

    ``state`` takes one state or several separated by commas.
    """
    states: list[str] = []
    for word in (params.get("state") or "").split(","):
        word = word.strip().upper()
        if not word:
            continue
        if word not in _STATES:
            raise QueryError(f"state must be one of {', '.join(sorted(_STATES))}; got {_short(word)!r}")
        states.append(word)
    text: dict[str, str | None] = {}
    for name in ("pipeline", "session", "child_of", "archive_path"):
        value = params.get(name)
        if value is not None and len(value) > 1024:
            raise QueryError(f"{name} is longer than 1024 characters")
        text[name] = value.strip() if value and value.strip() else None
    times = {name: parse_time(name, params[name]) for name in TIME_PARAMS if params.get(name)}
    return JobFilter(
        states=tuple(dict.fromkeys(states)),
        pipeline_uuid=text["pipeline"],
        session=text["session"],
        child_of=text["child_of"],
        archive_path=text["archive_path"],
        created_after=times.get("created_after"),
        created_before=times.get("created_before"),
        updated_after=times.get("updated_after"),
        updated_before=times.get("updated_before"),
        include_hidden=_flag("hidden", params.get("hidden")),
    )


# -- jobs -------------------------------------------------------------------------------------
def list_jobs(
    store: JobStore, where: JobFilter, *, after: str | None = None, limit: int = DEFAULT_PAGE, counts: bool = False
) -> dict[str, Any]:
    """A page of job summaries, newest created first, and the cursor of the next page.

    The order is (created desc, uuid desc): a job's creation time never changes, so
    paging is stable while jobs are created or change state (new jobs land before
    the first page). With ``counts``, ``counts`` holds the jobs per state under every
    filter but ``state`` (what choosing each state would list).
    """
    try:
        page = store.query_jobs(where, after=after, limit=limit)
    except ValueError:
        raise QueryError("after is not a cursor this list gave out") from None
    body: dict[str, Any] = {"jobs": jsonable(page.jobs), "next": page.next, "limit": limit}
    if counts:
        body["counts"] = count_jobs(store, where)
    return body


def count_jobs(store: JobStore, where: JobFilter) -> dict[str, int]:
    """Jobs per state under every filter but ``state``; states without jobs are 0."""
    found = store.count_jobs(where.without_states())
    return {state.value: found.get(state.value, 0) for state in fsm.State} | {
        k: v for k, v in found.items() if k not in _STATES
    }


def public_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """A job document as shown: no salt (the job token derives from it), no storage id."""
    return jsonable({k: v for k, v in job.items() if k not in _HIDDEN_FIELDS})


def get_job(store: JobStore, uuid: str) -> dict[str, Any] | None:
    """One job (hidden or not) with its recent ``history`` window; the full log is :func:`job_events`."""
    job = store.find_job(uuid)
    return None if job is None else public_job(job)


def event_view(record: EventRecord) -> dict[str, Any]:
    shown = {
        "seq": record.seq,
        "cursor": record.cursor,
        "event_uuid": record.event_uuid,
        "name": record.name,
        "date": record.date,
        "state": record.state or None,
        "outcome": record.outcome.value,
        "via": record.via,
        "event_id": record.event_id,
        "data": record.data,
    }
    return jsonable(shown)


#: A page of events stops before its events' JSON passes this: an event's data may be 256 KiB, so a page
#: of 1000 by count alone could be 256 MB. A page holds at least one event, whatever its size.
EVENTS_PAGE_BYTES = 4 * 1024 * 1024
_EVENTS_PER_READ = 100  # the store is read this many events at a time, so a page never holds much more


def job_events(
    store: JobStore,
    uuid: str,
    *,
    after: str | None = None,
    limit: int = DEFAULT_PAGE,
    max_bytes: int = EVENTS_PAGE_BYTES,
) -> dict[str, Any] | None:
    """A page of the job's full event log, oldest first; None when the job does not exist.

    At most ``limit`` events, and no more than fit in ``max_bytes`` of JSON (but at least one); ``next``
    continues after the last event shown whenever more follow.
    """
    if store.find_head(uuid) is None:
        return None
    events: list[dict[str, Any]] = []
    size, cursor = 0, after
    while len(events) < limit:
        try:
            page = store.history(uuid, after=cursor, limit=min(limit - len(events), _EVENTS_PER_READ))
        except ValueError:
            raise QueryError("after is not a cursor this log gave out") from None
        for record in page.records:
            shown = event_view(record)
            cost = len(dumps_utf8(shown)) + 1  # and its comma
            if events and size + cost > max_bytes:
                return {"uuid": uuid, "events": events, "next": events[-1]["cursor"], "limit": limit}
            events.append(shown)
            size += cost
        cursor = page.next
        if cursor is None:
            break
    return {"uuid": uuid, "events": events, "next": cursor, "limit": limit}


# -- pipelines --------------------------------------------------------------------------------
def list_pipelines(store: JobStore) -> list[dict[str, Any]]:
    return [jsonable({k: v for k, v in p.items() if k != "_id"}) for p in store.list_pipelines()]


def get_pipeline(store: JobStore, uuid: str) -> dict[str, Any] | None:
    found = store.find_pipeline(uuid)
    return None if found is None else jsonable({k: v for k, v in found.items() if k != "_id"})


# -- schemas ----------------------------------------------------------------------------------
def schema_names() -> dict[str, str]:
    """Each bundled message schema: short name -> file name."""
    return dict(SCHEMA_FILES)


def get_schema(name: str) -> dict[str, Any] | None:
    """A bundled schema by short name (``event``) or file name, with or without ``.json``; else None.

    Only names from :data:`SCHEMA_FILES` are ever opened, so no path can be asked for.
    """
    stem = name[:-5] if name.endswith(".json") else name
    for short, file_name in SCHEMA_FILES.items():
        if stem in (short, file_name[:-5]):
            return json.loads((schema_dir() / file_name).read_text(encoding="utf-8"))
    return None
