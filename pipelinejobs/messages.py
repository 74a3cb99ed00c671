"""Classify a received message as exactly one kind, validated against its schema.

The kinds, tried in this order: a PipelineJobEvent, a PipelineJobDeleteAction or
a PipelineJobAction (create) in the body (the three schemas exclude each other
through ``additionalProperties: false``); an Agave job callback (``status`` URL
parameter and an Agave job record as body); a Tapis v3 job notification (a body
with an ``event`` object, ``uuid``/``token`` URL parameters, no ``name``); an event
by URL parameters (``uuid`` and ``name``/``event`` parameters, the JSON body
becomes ``data``). A message that fits none is rejected with, for each candidate,
the reason it did not fit: keyword, field path and schema title, never the
submitted value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from . import agave, tapis
from .errors import ErrorKind, PipelineJobsError
from .intake import Intake

SCHEMA_FILES = {
    "event": "PipelineJobEvent.json",
    "delete": "PipelineJobDeleteAction.json",
    "create": "PipelineJobAction.json",
    "agavejobs": "AgaveJobsPost.json",
    "tapisv3": "TapisV3JobNotification.json",
}


@dataclass(frozen=True)
class EventMessage:
    uuid: str
    name: str
    token: str | None = None
    data: dict[str, Any] | None = None
    via: str = "message"  # message | url | agave | tapis
    event_id: str | None = None  # a delivery id: a repeated delivery is answered, not applied again
    status: str | None = None  # a scheduler's own status word (Agave/Tapis callbacks), for stale checks


@dataclass(frozen=True)
class DeleteMessage:
    uuid: str
    force: bool = False
    token: str | None = None


@dataclass(frozen=True)
class CreateMessage:
    pipeline_uuid: str
    archive_path: str
    data: dict[str, Any]
    archive_system: str | None = None
    session: str | None = None
    child_of: tuple[str, ...] = ()
    deadlines: Any = None  # __options.deadlines: this job's own deadlines (checked by watch.check_deadlines)


Message = EventMessage | DeleteMessage | CreateMessage


def schema_dir() -> Path:
    """The bundled schemas: inside the installed package, else the checkout's ``schemas/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "schemas", here.parent / "schemas"):
        if (candidate / SCHEMA_FILES["event"]).exists():
            return candidate
    raise PipelineJobsError(ErrorKind.CONFIGURATION, "the bundled JSON schemas were not found")


@cache
def validator(kind: str) -> Any:
    """A draft-07 validator per schema, built once per process."""
    from jsonschema import Draft7Validator

    schema = json.loads((schema_dir() / SCHEMA_FILES[kind]).read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def _field_path(error: Any) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return path.lstrip(".") or "(message)"


def _explain(error: Any) -> str:
    """A reason for one schema error that never repeats the submitted value."""
    keyword, expected = error.validator, error.validator_value
    where = _field_path(error)
    if keyword == "required":
        present = error.instance if isinstance(error.instance, dict) else {}
        missing = [name for name in expected if name not in present]
        return f"missing required field {', '.join(repr(m) for m in missing)}"
    if keyword == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(str(k)[:40] for k in error.instance if k not in allowed)
        return f"unexpected field {', '.join(repr(e) for e in extra)}"
    if keyword == "type":
        return f"{where}: must be of type {expected if isinstance(expected, str) else ' or '.join(expected)}"
    if keyword == "enum":
        return f"{where}: must be one of {', '.join(str(v) for v in expected)}"
    if keyword == "pattern":
        return f"{where}: is not in the expected format"
    if keyword in ("minLength", "maxLength"):
        bound = "at least" if keyword == "minLength" else "at most"
        return f"{where}: must be {bound} {expected} characters"
    return f"{where}: fails the '{keyword}' rule"


def schema_errors(kind: str, instance: Any) -> list[str]:
    """Every reason ``instance`` does not fit the schema of ``kind`` (empty when it fits)."""
    from jsonschema.exceptions import relevance

    check = validator(kind)
    errors = sorted(check.iter_errors(instance), key=relevance, reverse=True)
    return list(dict.fromkeys(_explain(e) for e in errors))  # one line per reason, in relevance order


def _title(kind: str) -> str:
    return validator(kind).schema.get("title", kind)


def _check_data(data: Any, max_bytes: int) -> None:
    if data is None:
        return
    size = len(json.dumps(data, separators=(",", ":")).encode())
    if size > max_bytes:
        raise PipelineJobsError(
            ErrorKind.BAD_MESSAGE,
            f"data is {size} bytes; the limit is {max_bytes}",
            size=size,
            limit=max_bytes,
        )
    bad = _bad_key(data, "data")
    if bad:
        raise PipelineJobsError(
            ErrorKind.BAD_MESSAGE,
            f"{bad}: field names may not start with '$' or contain '.' or NUL",
            field=bad,
        )


def _bad_key(value: Any, path: str) -> str | None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key.startswith("$") or "." in key or "\x00" in key:
                return f"{path}.{key[:40]}"
            found = _bad_key(item, f"{path}.{key[:40]}")
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _bad_key(item, f"{path}[{index}]")
            if found:
                return found
    return None


def _event(fields: dict[str, Any], via: str) -> EventMessage:
    return EventMessage(
        uuid=fields["uuid"], name=fields["name"], token=fields.get("token"), data=fields.get("data"), via=via
    )


def _validated_event(fields: dict[str, Any], via: str, what: str) -> EventMessage:
    reasons = schema_errors("event", fields)
    if reasons:
        raise PipelineJobsError(
            ErrorKind.BAD_MESSAGE,
            f"{what} does not make a valid {_title('event')}: " + "; ".join(reasons),
            schema=_title("event"),
            reasons=reasons,
        )
    return _event(fields, via)


def classify(intake: Intake, max_data_bytes: int = 262144) -> Message:
    """Turn a received message into exactly one typed message, or say why it fits none."""
    message = _classify(intake)
    _check_data(getattr(message, "data", None), max_data_bytes)
    return message


def _classify(intake: Intake) -> Message:
    body, params = intake.body, intake.params
    url_token = params.get("token")
    why_not: dict[str, list[str]] = {}
    if isinstance(body, dict):
        for kind in ("event", "delete", "create"):
            reasons = schema_errors(kind, body)
            if not reasons:
                return _from_body(kind, body, url_token)
            why_not[_title(kind)] = reasons[:3]
        status = params.get("status")
        if status:
            reasons = schema_errors("agavejobs", body)
            if not reasons:
                return _agave_callback(body, params)
            why_not[_title("agavejobs") + " (callback with status parameter)"] = reasons[:3]
        if isinstance(body.get("event"), dict) and not (params.get("name") or params.get("event")):
            reasons = schema_errors("tapisv3", body) or ([] if params.get("uuid") else ["needs the uuid URL parameter"])
            if not reasons:
                return _tapis_notification(body, params)
            why_not[_title("tapisv3") + " (callback with uuid parameter)"] = reasons[:3]
    name = params.get("name") or params.get("event")
    if params.get("uuid") and name:
        if body is None or isinstance(body, dict):
            fields = {"uuid": params["uuid"], "name": name, "data": body}
            if url_token:
                fields["token"] = url_token
            if body is None:
                del fields["data"]
            return _validated_event(fields, "url", "the URL parameters")
        why_not["event by URL parameters"] = ["the body must be a JSON object (it becomes the event's data)"]
    else:
        why_not["event by URL parameters"] = ["needs the uuid and name (or event) URL parameters"]
    if not isinstance(body, dict):
        shapes = {type(None): "empty", str: "not JSON", list: "a JSON array", bool: "a JSON boolean"}
        shape = shapes.get(type(body), "a JSON number")
        titles = ", ".join(_title(kind) for kind in ("event", "delete", "create"))
        why_not[titles] = [f"the message is {shape}; these need a JSON object"]
    summary = " | ".join(f"{title}: {'; '.join(reasons)}" for title, reasons in why_not.items())
    raise PipelineJobsError(
        ErrorKind.BAD_MESSAGE,
        f"the message fits no accepted message type -- {summary}",
        candidates=why_not,
    )


def _from_body(kind: str, body: dict[str, Any], url_token: str | None) -> Message:
    if kind in ("event", "delete") and "token" not in body and url_token:
        body = {**body, "token": url_token}
        reasons = schema_errors(kind, body)
        if reasons:
            raise PipelineJobsError(
                ErrorKind.BAD_MESSAGE,
                f"the token URL parameter does not fit {_title(kind)}: " + "; ".join(reasons),
                schema=_title(kind),
                reasons=reasons,
            )
    if kind == "event":
        return _event(body, "message")
    if kind == "delete":
        return DeleteMessage(uuid=body["uuid"], force=body.get("force") is True, token=body.get("token"))
    return CreateMessage(
        pipeline_uuid=body["pipeline_uuid"],
        archive_path=body["archive_path"],
        data=body["data"],
        archive_system=body.get("archive_system"),
        session=body.get("session"),
        child_of=tuple(body.get("child_of") or ()),
        deadlines=(body.get("__options") or {}).get("deadlines"),
    )


def _agave_callback(record: dict[str, Any], params: dict[str, str]) -> EventMessage:
    status = params["status"]
    if "$" in status:  # the notification's ${JOB_STATUS} macro was not expanded
        status = str(record.get("status", ""))
    fields: dict[str, Any] = {
        "uuid": params.get("uuid", ""),
        "name": agave.event_for_status(status),
        "data": agave.event_data(record),
    }
    if params.get("token"):
        fields["token"] = params["token"]
    return _validated_event(fields, "agave", "the Agave callback's URL parameters")


def _tapis_notification(notification: dict[str, Any], params: dict[str, str]) -> EventMessage:
    fields: dict[str, Any] = {
        "uuid": params["uuid"],
        "name": tapis.event_for_status(tapis.job_status(notification)),
        "data": tapis.event_data(notification),
    }
    if params.get("token"):
        fields["token"] = params["token"]
    return _validated_event(fields, "tapis", "the Tapis notification's URL parameters")
