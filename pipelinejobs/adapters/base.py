"""What an intake format declares, and the helpers the formats share.

An intake format is one module of this package that declares, as module-level names:

- ``VIA``: the word its messages carry in the log and the answers (``message``, ``agave``...);
- ``SCHEDULER``: whether its events report a scheduler's or an engine's view of a compute job,
  which arrives late and out of order (such a late event is logged as stale, never refused);
  a scheduler format's module is named after its ``VIA``;
- ``CHANNELS``: where its messages arrive: ``messages`` (the Abaco messages route, reactor.py,
  the CLI, the client: recognised by their shape) or a serve route of its own (``snakemake``);
- ``recognise(intake) -> Verdict``: whether a received message is of this format, and if it
  is not but looks close, why (worded only when every format refuses the message);
- ``to_message(intake) -> Message``: the typed message, with the job's credential where the
  format carries it (its module docstring says where).

The module is pure: bytes already parsed into an :class:`~pipelinejobs.intake.Intake` in,
a message out, no I/O. Registering it is one line in ``adapters/__init__.py``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from ..bundled_schemas import Misfit, fits, refusal
from ..errors import ErrorKind, PipelineJobsError
from ..intake import Intake
from ..message_types import EventMessage, Message


@dataclass(frozen=True)
class Verdict:
    """Whether a message is of a format; when not, why not (``misfits``, worded only if every format refuses)."""

    mine: bool
    misfits: tuple[Misfit, ...] = ()


MINE = Verdict(True)
NOT_MINE = Verdict(False)


def misfit(*misfits: Misfit) -> Verdict:
    return Verdict(False, misfits)


class Adapter(Protocol):
    """An intake format module (see the module docstring)."""

    VIA: str
    SCHEDULER: bool
    CHANNELS: frozenset[str]

    def recognise(self, intake: Intake) -> Verdict: ...

    def to_message(self, intake: Intake) -> Message: ...


# -- helpers for the formats that make PipelineJobEvents ----------------------------------------
def event(fields: dict[str, Any], via: str, status: str | None = None) -> EventMessage:
    return EventMessage(
        uuid=fields["uuid"],
        name=fields["name"],
        token=fields.get("token"),
        data=fields.get("data"),
        via=via,
        event_id=fields.get("event_id"),
        status=status,
    )


def validated_event(fields: dict[str, Any], via: str, what: str, status: str | None = None) -> EventMessage:
    """An event from ``fields`` once they fit the PipelineJobEvent schema; else the refusal naming ``what``."""
    if not fits("event", fields):
        raise refusal("event", what, fields)
    return event(fields, via, status)


def with_params(fields: dict[str, Any], params: dict[str, str], derived_id: str | None = None) -> dict[str, Any]:
    """Add the ``token`` URL parameter, and the delivery id: the ``event_id`` parameter, else ``derived_id``."""
    if params.get("token"):
        fields["token"] = params["token"]
    event_id = params.get("event_id") or derived_id
    if event_id:
        fields["event_id"] = event_id
    return fields


# -- helpers for the formats whose reports are kept as they come (engines) ---------------------
_JOB_UUID = re.compile(r"107[0-9a-f]{5}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def job_uuid(candidate: Any, where: str) -> str:
    """``candidate`` if it is a PipelineJob uuid; else a refusal saying ``where`` it was looked for."""
    if isinstance(candidate, str) and _JOB_UUID.fullmatch(candidate):
        return candidate
    raise PipelineJobsError(ErrorKind.BAD_MESSAGE, f"no PipelineJob uuid: {where}")


def storable_keys(value: Any) -> bool:
    """Whether every field name in ``value`` is one both stores keep (no leading ``$``, no ``.``, no NUL)."""
    if isinstance(value, dict):
        return all(
            isinstance(k, str) and not k.startswith("$") and "." not in k and "\x00" not in k and storable_keys(v)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return all(storable_keys(item) for item in value)
    return True


def text(value: Any, limit: int = 2000) -> str | None:
    """``value`` as text of at most ``limit`` characters (None stays None): what a record keeps of free text."""
    if value is None:
        return None
    shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def bounded(value: Any, limit: int = 65536) -> Any:
    """``value`` when its JSON is at most ``limit`` bytes and its field names are storable; else its JSON text,
    cut to ``limit``: an engine's report is kept, never refused for its size or its field names."""
    try:
        encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return text(str(value), limit)
    if len(encoded.encode("utf-8", "surrogatepass")) <= limit and storable_keys(value):
        return value
    return {"_json_text": text(encoded, limit // 2)}


def capped_list(value: Any, limit: int = 100) -> list[Any]:
    """The first ``limit`` items of a list, each a short text (an output file list can be long)."""
    items = value if isinstance(value, list) else [] if value is None else [value]
    return [text(item, 1000) for item in items[:limit]]
