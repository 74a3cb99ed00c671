"""The stored documents, laid out exactly as datacatalog writes them (compat §4)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

from . import identifiers
from .settings import Identity

DEFAULT_ARCHIVE_SYSTEM = "data-sd2e-community"
RECORD_SOURCE = "pipelinejobs-manager"


def utc_seconds(moment: datetime) -> datetime:
    """UTC, truncated to whole seconds, as the catalog stores dates."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).replace(microsecond=0)


def as_utc(moment: Any, default: datetime) -> datetime:
    """A stored time as aware UTC (naive times are UTC, as BSON's are); ``default`` when it is not a time."""
    if not isinstance(moment, datetime):
        return default
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def revision(job: dict[str, Any]) -> int:
    """A job's ``_properties.revision`` (0 for a job the old library wrote without one)."""
    found = (job.get("_properties") or {}).get("revision")
    return found if isinstance(found, int) and not isinstance(found, bool) else 0


def admin_block(identity: Identity) -> dict[str, str]:
    # key order matters: the job token hashes repr() of this dict
    return {"owner": identity.owner, "project": identity.project, "tenant": identity.tenant}


def history_entry(
    name: str, data: dict[str, Any] | None, now: datetime, event_uuid: str | None = None
) -> dict[str, Any]:
    return {
        "date": utc_seconds(now),
        "data": data,
        "name": name,
        "uuid": event_uuid or identifiers.random_uuid("pipelinejob_event"),
    }


def canonical_json(value: Any) -> str:
    """Minified JSON with sorted keys: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def payload_digest(name: str, data: dict[str, Any] | None) -> str:
    """What identifies a delivery's content, to tell a retry from a different message with the same id."""
    return hashlib.sha256(canonical_json([name, data]).encode("utf-8", "surrogatepass")).hexdigest()


def inline_data(data: dict[str, Any] | None, limit: int, seq: int) -> dict[str, Any] | None:
    """``data`` as a job document's history window holds it: large data stays only in the event log.

    This is what keeps a job document bounded whatever its events carry: a window of N
    entries holds at most N times ``limit`` bytes of event data.
    """
    if data is None:
        return None
    size = len(canonical_json(data).encode("utf-8", "surrogatepass"))
    if size <= limit:
        return data
    return {"_in_event_log": {"seq": seq, "bytes": size}}


def new_job(
    *,
    uuid: str,
    pipeline_uuid: str,
    archive_path: str,
    archive_system: str | None,
    data: dict[str, Any],
    session: str | None,
    child_of: list[str],
    identity: Identity,
    now: datetime,
    agent: str | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """A job in state CREATED with its ``create`` history entry and a fresh ``_salt``."""
    created = utc_seconds(now)
    return {
        "pipeline_uuid": pipeline_uuid,
        "archive_path": archive_path,
        "archive_system": archive_system or DEFAULT_ARCHIVE_SYSTEM,
        "archive_patterns": [],
        "product_patterns": [],
        "data": data,
        "session": session,
        "agent": agent,
        "task": task,
        "generated_by": [pipeline_uuid],
        "child_of": list(child_of),
        "acted_on": [],
        "acted_using": [],
        "uuid": uuid,
        "state": "CREATED",
        "last_event": "create",
        "updated": created,
        "history": [history_entry("create", data, created)],
        "_visible": True,
        "_properties": {
            "created_date": created,
            "modified_date": created,
            "revision": 0,
            "source": RECORD_SOURCE,
        },
        "_admin": admin_block(identity),
        "_salt": identifiers.new_salt(),
    }


def audit_record(uuid: str, action: str, diff: dict[str, Any], admin: dict[str, Any], now: datetime) -> dict[str, Any]:
    """An entry of the ``updates`` collection: who changed which document, and how."""
    return {"uuid": uuid, "date": utc_seconds(now), "action": action, "diff": diff, "_admin": dict(admin)}


def public_view(job: dict[str, Any]) -> dict[str, Any]:
    """A job as shown to people and clients: without the salt and the storage id."""
    return {key: value for key, value in job.items() if key not in ("_salt", "_id")}
