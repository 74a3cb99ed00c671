"""Classify a received message as exactly one kind, by trying the registered intake formats in turn.

The formats (``pipelinejobs/adapters``) are tried in their registry's order, those of the
channel the message arrived on only: the manager's own messages in the body; an Agave job
callback; a Tapis v3 job notification; a Nextflow weblog post; an event by URL parameters
(serve's ``/snakemake`` route brings Snakemake's). The first that recognises the message
makes it a typed message. A message that fits none is refused with, for each candidate, the
reason it did not fit: keyword, field path and schema title, never the submitted value.

Whether a message fits is decided by ``schemacheck`` (no jsonschema import on the hot path);
jsonschema words the reasons only when every candidate is refused.
"""

from __future__ import annotations

import json
from typing import Any

from . import adapters
from .bundled_schemas import SCHEMA_FILES, Misfit, fits, schema, schema_dir, schema_errors, validator
from .errors import ErrorKind, PipelineJobsError
from .intake import Intake
from .limits import check_json_value
from .message_types import CreateMessage, DeleteMessage, EventMessage, Message, ReportMessage

__all__ = [
    "SCHEMA_FILES",
    "CreateMessage",
    "DeleteMessage",
    "EventMessage",
    "Message",
    "ReportMessage",
    "classify",
    "fits",
    "schema",
    "schema_dir",
    "schema_errors",
    "validator",
]


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


def classify(intake: Intake, max_data_bytes: int = 262144) -> Message:
    """Turn a received message into exactly one typed message, or say why it fits none.

    Before any format is consulted, everything received is checked for what no store
    can keep (``limits``); a Tapis notification's ``event.data`` string is checked when
    it is decoded.
    """
    _check_received(intake)
    message = _classify(intake)
    _check_data(getattr(message, "data", None), max_data_bytes)
    return message


def _classify(intake: Intake) -> Message:
    refused: list[Misfit] = []  # the candidates that came close, explained only if none takes the message
    for candidate in adapters.on_channel(intake.channel):
        verdict = candidate.recognise(intake)
        if verdict.mine:
            return candidate.to_message(intake)
        refused += verdict.misfits
    why_not: dict[str, list[str]] = {}
    for each in refused:
        why_not.setdefault(each.title, each.reasons())
    summary = " | ".join(f"{title}: {'; '.join(reasons)}" for title, reasons in why_not.items())
    raise PipelineJobsError(
        ErrorKind.BAD_MESSAGE,
        f"the message fits no accepted message type -- {summary}",
        candidates=why_not,
    )
