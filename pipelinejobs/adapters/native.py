"""The manager's own messages as the body: a PipelineJobEvent, PipelineJobDeleteAction or PipelineJobAction.

Recognised by the body alone: the three schemas exclude each other through
``additionalProperties: false``. Credential: the job's ``token`` in the body, or the
``token`` URL parameter when the body has none (a create needs none; it may carry one to
be told the token of a job that exists). An event's delivery id is ``event_id`` in the
body, else the ``event_id`` URL parameter.
"""

from __future__ import annotations

from typing import Any

from ..bundled_schemas import Misfit, fits, refusal, title
from ..intake import Intake
from ..message_types import CreateMessage, DeleteMessage, Message
from .base import MINE, Verdict, event, misfit

VIA = "message"
SCHEDULER = False
CHANNELS = frozenset({"messages"})
KINDS = ("event", "delete", "create")
_SHAPES = {type(None): "empty", str: "not JSON", list: "a JSON array", bool: "a JSON boolean"}


def recognise(intake: Intake) -> Verdict:
    body = intake.body
    if not isinstance(body, dict):
        shape = _SHAPES.get(type(body), "a JSON number")
        titles = ", ".join(title(kind) for kind in KINDS)
        return misfit(Misfit(titles, reason=f"the message is {shape}; these need a JSON object"))
    if any(fits(kind, body) for kind in KINDS):
        return MINE
    return misfit(*(Misfit(title(kind), kind, body) for kind in KINDS))


def to_message(intake: Intake) -> Message:
    body: dict[str, Any] = intake.body
    kind = next(kind for kind in KINDS if fits(kind, body))
    params = intake.params
    # URL parameters fill what the body leaves out (the body wins): token, and an event's delivery id
    names = [name for name in ("token", "event_id") if name not in body and params.get(name)]
    if kind != "event" and "event_id" in names:
        names.remove("event_id")
    if names:
        body = {**body, **{name: params[name] for name in names}}
        if not fits(kind, body):
            raise refusal(kind, f"the {' and '.join(names)} URL parameter{'s' if len(names) > 1 else ''}", body)
    if kind == "event":
        return event(body, VIA)
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
