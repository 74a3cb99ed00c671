"""A PipelineJobEvent by URL parameters: ``uuid``, ``name`` (or the older ``event``) and ``token``
are query parameters (under Abaco, environment variables) and the JSON object body, if any,
becomes the event's ``data``. Tried after every format recognised by its body.

Credential: the ``token`` URL parameter. Delivery id: the ``event_id`` URL parameter.
"""

from __future__ import annotations

from typing import Any

from ..bundled_schemas import Misfit
from ..intake import Intake
from ..message_types import Message
from .base import MINE, Verdict, misfit, validated_event, with_params

VIA = "url"
SCHEDULER = False
CHANNELS = frozenset({"messages"})
TITLE = "event by URL parameters"


def _name(intake: Intake) -> str | None:
    return intake.params.get("name") or intake.params.get("event")


def recognise(intake: Intake) -> Verdict:
    if not (intake.params.get("uuid") and _name(intake)):
        return misfit(Misfit(TITLE, reason="needs the uuid and name (or event) URL parameters"))
    if intake.body is None or isinstance(intake.body, dict):
        return MINE
    return misfit(Misfit(TITLE, reason="the body must be a JSON object (it becomes the event's data)"))


def to_message(intake: Intake) -> Message:
    fields: dict[str, Any] = {"uuid": intake.params["uuid"], "name": _name(intake)}
    if intake.body is not None:
        fields["data"] = intake.body
    return validated_event(with_params(fields, intake.params), VIA, "the URL parameters")
