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

Whether a message fits is decided by ``schemacheck`` (no jsonschema import on the
hot path); jsonschema words the reasons only when every candidate is refused.
An event's delivery id (``event_id``) comes from the body, else the ``event_id``
URL parameter, else is derived from an Agave or Tapis callback (``agave.delivery_id``,
``tapis.delivery_id``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from . import agave, tapis
from .errors import ErrorKind, PipelineJobsError
from .intake import Intake
from .limits import check_json_value
from .schemacheck import compile_schema

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
    token: str | None = field(default=None, repr=False)  # a credential: never in a repr (a log line, a traceback)
    data: dict[str, Any] | None = None
    via: str = "message"  # message | url | agave | tapis
    event_id: str | None = None  # a delivery id: a repeated delivery is answered, not applied again
    status: str | None = None  # a scheduler's own status word (Agave/Tapis callbacks), for stale checks


@dataclass(frozen=True)
class DeleteMessage:
    uuid: str
    force: bool = False
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CreateMessage:
    pipeline_uuid: str
    archive_path: str
    data: dict[str, Any]
    archive_system: str | None = None
    session: str | None = None
    child_of: tuple[str, ...] = ()
    deadlines: Any = None  # __options.deadlines: this job's own deadlines (checked by deadlines.check_deadlines)
    #: the job's own token (or an admin token), which a create that finds the job must show to be told it
    token: str | None = field(default=None, repr=False)


Message = EventMessage | DeleteMessage | CreateMessage


def schema_dir() -> Path:
    """The bundled schemas: inside the installed package, else the checkout's ``schemas/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "schemas", here.parent / "schemas"):
        if (candidate / SCHEMA_FILES["event"]).exists():
            return candidate
    raise PipelineJobsError(ErrorKind.CONFIGURATION, "the bundled JSON schemas were not found")


@cache
def schema(kind: str) -> dict[str, Any]:
    """The bundled schema of ``kind``, read once per process."""
    return json.loads((schema_dir() / SCHEMA_FILES[kind]).read_text(encoding="utf-8"))


@cache
def _checker(kind: str) -> Any:
    return compile_schema(schema(kind), SCHEMA_FILES[kind])


def fits(kind: str, instance: Any) -> bool:
    """Whether ``instance`` is valid against the schema of ``kind``: the cheap check of the hot path."""
    return bool(_checker(kind)(instance))


@cache
def validator(kind: str) -> Any:
    """A draft-07 jsonschema validator, built once per process; imported only to explain a refusal."""
    from jsonschema import Draft7Validator

    Draft7Validator.check_schema(schema(kind))
    return Draft7Validator(schema(kind))


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
    """Every reason ``instance`` does not fit the schema of ``kind`` (empty when it fits).

    The cheap check decides; jsonschema is imported only to word the reasons of a refusal.
    """
    if fits(kind, instance):
        return []
    from jsonschema.exceptions import relevance

    errors = sorted(validator(kind).iter_errors(instance), key=relevance, reverse=True)
    reasons = list(dict.fromkeys(_explain(e) for e in errors))  # one line per reason, in relevance order
    return reasons or ["(message): does not fit the schema"]


def _title(kind: str) -> str:
    return str(schema(kind).get("title", kind))


def _refusal(kind: str, what: str, instance: Any) -> PipelineJobsError:
    reasons = schema_errors(kind, instance)
    return PipelineJobsError(
        ErrorKind.BAD_MESSAGE,
        f"{what} does not make a valid {_title(kind)}: " + "; ".join(reasons),
        schema=_title(kind),
        reasons=reasons,
    )


def _check_received(intake: Intake) -> None:
    """Everything received, body, URL parameters and Abaco's context, holds only what the stores keep."""
    check_json_value(intake.body)
    for name, value in intake.params.items():
        check_json_value(value, f"URL parameter {name[:40]!r}")
    for name, value in vars(intake.origin).items():
        if value is not None:
            check_json_value(value, f"Abaco's {name}")


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


def _event(fields: dict[str, Any], via: str, status: str | None = None) -> EventMessage:
    return EventMessage(
        uuid=fields["uuid"],
        name=fields["name"],
        token=fields.get("token"),
        data=fields.get("data"),
        via=via,
        event_id=fields.get("event_id"),
        status=status,
    )


def _validated_event(fields: dict[str, Any], via: str, what: str, status: str | None = None) -> EventMessage:
    if not fits("event", fields):
        raise _refusal("event", what, fields)
    return _event(fields, via, status)


def _with_params(fields: dict[str, Any], params: dict[str, str], derived_id: str | None = None) -> dict[str, Any]:
    """Add the ``token`` URL parameter, and the delivery id: the ``event_id`` parameter, else ``derived_id``."""
    if params.get("token"):
        fields["token"] = params["token"]
    event_id = params.get("event_id") or derived_id
    if event_id:
        fields["event_id"] = event_id
    return fields


def classify(intake: Intake, max_data_bytes: int = 262144) -> Message:
    """Turn a received message into exactly one typed message, or say why it fits none.

    Before any schema is consulted, everything received is checked for what no store
    can keep (``limits``); a Tapis notification's ``event.data`` string is checked when
    it is decoded.
    """
    _check_received(intake)
    message = _classify(intake)
    _check_data(getattr(message, "data", None), max_data_bytes)
    return message


def _classify(intake: Intake) -> Message:
    body, params = intake.body, intake.params
    # (title, kind, instance or a fixed reason): the candidates refused, explained only if all are
    refused: list[tuple[str, str, Any]] = []
    if isinstance(body, dict):
        for kind in ("event", "delete", "create"):
            if fits(kind, body):
                return _from_body(kind, body, params)
            refused.append((_title(kind), kind, body))
        if params.get("status"):
            if fits("agavejobs", body):
                return _agave_callback(body, params)
            refused.append((_title("agavejobs") + " (callback with status parameter)", "agavejobs", body))
        if isinstance(body.get("event"), dict) and not (params.get("name") or params.get("event")):
            title = _title("tapisv3") + " (callback with uuid parameter)"
            if not fits("tapisv3", body):
                refused.append((title, "tapisv3", body))
            elif not params.get("uuid"):
                refused.append((title, "", "needs the uuid URL parameter"))
            else:
                return _tapis_notification(body, params)
    name = params.get("name") or params.get("event")
    if params.get("uuid") and name:
        if body is None or isinstance(body, dict):
            fields: dict[str, Any] = {"uuid": params["uuid"], "name": name}
            if body is not None:
                fields["data"] = body
            return _validated_event(_with_params(fields, params), "url", "the URL parameters")
        refused.append(("event by URL parameters", "", "the body must be a JSON object (it becomes the event's data)"))
    else:
        refused.append(("event by URL parameters", "", "needs the uuid and name (or event) URL parameters"))
    why_not = {title: schema_errors(kind, instance)[:3] if kind else [instance] for title, kind, instance in refused}
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


def _from_body(kind: str, body: dict[str, Any], params: dict[str, str]) -> Message:
    # URL parameters fill what the body leaves out (the body wins): token, and an event's delivery id
    names = [name for name in ("token", "event_id") if name not in body and params.get(name)]
    if kind != "event" and "event_id" in names:
        names.remove("event_id")
    if names:
        body = {**body, **{name: params[name] for name in names}}
        if not fits(kind, body):
            raise _refusal(kind, f"the {' and '.join(names)} URL parameter{'s' if len(names) > 1 else ''}", body)
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
        token=body.get("token"),
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
    fields = _with_params(fields, params, agave.delivery_id(record, status))
    return _validated_event(fields, "agave", "the Agave callback's URL parameters", status.strip().upper() or None)


def _tapis_notification(notification: dict[str, Any], params: dict[str, str]) -> EventMessage:
    status = tapis.job_status(notification)
    fields: dict[str, Any] = {
        "uuid": params["uuid"],
        "name": tapis.event_for_status(status),
        "data": tapis.event_data(notification),
    }
    fields = _with_params(fields, params, tapis.delivery_id(notification))
    return _validated_event(fields, "tapis", "the Tapis notification's URL parameters", status or None)
