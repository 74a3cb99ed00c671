"""Documents as the JSON text the ``doc`` columns hold (datetimes tagged), and values as columns and timestamps."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ..records import (
    Document,
    EventRecord,
)

_DATE = "$date"  # JSON tag of a datetime
_LITERAL = "$literal"  # JSON tag of a stored dict that would otherwise look like a tag
_TAGS = frozenset({_DATE, _LITERAL})


# -- documents as JSON -----------------------------------------------------------------------
def _utc(moment: datetime) -> datetime:
    # naive datetimes are taken as UTC, as BSON does
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


_SCALARS = frozenset({str, int, float, bool, type(None)})  # JSON as they are: no call to _tagged


def _tagged(value: Any) -> Any:
    """``value`` with datetimes replaced by ``{"$date": iso}``; dict key order is kept."""
    if isinstance(value, datetime):
        return {_DATE: _utc(value).isoformat()}
    if isinstance(value, dict):
        plain = {str(key): item if type(item) in _SCALARS else _tagged(item) for key, item in value.items()}
        if len(plain) == 1 and next(iter(plain)) in _TAGS:  # a stored dict that looks like a tag:
            return {_LITERAL: list(plain.items())}  # kept as pairs, which the decoder never untags
        return plain
    if isinstance(value, (list, tuple)):
        return [item if type(item) in _SCALARS else _tagged(item) for item in value]
    return value


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if _DATE in obj and isinstance(obj[_DATE], str):
            return datetime.fromisoformat(obj[_DATE]).astimezone(timezone.utc)
        if _LITERAL in obj and isinstance(obj[_LITERAL], list):
            return dict(obj[_LITERAL])
    return obj


def dumps_document(doc: Mapping[str, Any]) -> str:
    """A document as the JSON text stored in a ``doc`` column."""
    return json.dumps(_tagged(dict(doc)), ensure_ascii=False, separators=(",", ":"))


def loads_document(text: str) -> Document:
    """The stored JSON text back as a document, with timezone-aware UTC datetimes."""
    return json.loads(text, object_hook=_untag)


def _column(value: Any) -> str | int | float | None:
    """A document value as an indexable column; structured values are not filterable."""
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def _timestamp(value: Any) -> float | None:
    return _utc(value).timestamp() if isinstance(value, datetime) else None


def _moment(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def _record_row(record: EventRecord) -> tuple[Any, ...]:
    return (
        record.uuid,
        record.seq,
        record.slot,
        record.event_id,
        record.outcome.value,
        dumps_document(record.to_document()),
    )


#: a job's head (store.base.HEAD_FIELDS but the salt) as columns, in the order _head takes them
_HEAD_COLUMNS = "state, pipeline_uuid, updated, visible, revision, json_extract(doc, '$._admin')"


def _head(uuid: str, state: Any, pipeline_uuid: Any, updated: Any, visible: Any, revision: Any, admin: Any) -> Document:
    return {
        "uuid": uuid,
        "state": state,
        "pipeline_uuid": pipeline_uuid,
        "updated": _moment(updated),
        "_visible": bool(visible),
        "_properties": {"revision": revision},
        "_admin": loads_document(admin) if admin else None,
    }


def _record(text: str) -> EventRecord:
    return EventRecord.from_document(loads_document(text))
