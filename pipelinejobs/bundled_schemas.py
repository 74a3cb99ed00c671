"""The bundled JSON Schemas of the accepted messages: read once, checked cheaply, refusals worded safely.

Whether a value fits is decided by ``schemacheck`` (no jsonschema import on the hot path);
jsonschema words the reasons only when a message is refused. A reason names the keyword,
the field path and the schema, never the submitted value (it may be a token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .errors import ErrorKind, PipelineJobsError
from .schemacheck import compile_schema

SCHEMA_FILES = {
    "event": "PipelineJobEvent.json",
    "delete": "PipelineJobDeleteAction.json",
    "create": "PipelineJobAction.json",
    "agavejobs": "AgaveJobsPost.json",
    "tapisv3": "TapisV3JobNotification.json",
}


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


def title(kind: str) -> str:
    return str(schema(kind).get("title", kind))


def refusal(kind: str, what: str, instance: Any) -> PipelineJobsError:
    """The error for ``what`` (a message, its URL parameters...) that does not fit the schema of ``kind``."""
    reasons = schema_errors(kind, instance)
    return PipelineJobsError(
        ErrorKind.BAD_MESSAGE,
        f"{what} does not make a valid {title(kind)}: " + "; ".join(reasons),
        schema=title(kind),
        reasons=reasons,
    )


@dataclass(frozen=True)
class Misfit:
    """Why a message is not of one candidate type, worded only if every candidate refuses it.

    Either ``kind`` and ``instance`` (the schema it fails; jsonschema words why) or a fixed ``reason``.
    """

    title: str
    kind: str = ""
    instance: Any = None
    reason: str = ""

    def reasons(self) -> list[str]:
        return schema_errors(self.kind, self.instance)[:3] if self.kind else [self.reason]
