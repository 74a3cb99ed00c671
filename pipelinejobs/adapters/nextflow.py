"""Nextflow's weblog (the nf-weblog plugin): one POST per workflow and task event, kept on the job.

The body is ``{"runName", "runId", "event", "utcTime", "trace"?, "metadata"?}``; ``event`` is
``started``, ``process_submitted``, ``process_started``, ``process_completed``, ``error`` or
``completed`` (anything else is kept too). Recognised by its body: a string ``event`` beside
``runId`` and ``runName``, on serve's ``/nextflow`` route (which also reads HTTP Basic
credentials and bodies that are not valid UTF-8) or on the messages route.

- Job: the ``uuid`` URL parameter, else ``runId`` when the run was started with
  ``NXF_UUID=<job uuid>``.
- Credential: the ``token`` URL parameter, or the password of HTTP Basic auth on ``/nextflow``
  (whose user name is the nonce; ``server/engines.py``).
- Delivery id: ``nextflow:`` and a digest of the body (the weblog has none and never retries,
  but a post that arrives twice is the same report, applied once).

``started`` makes the job RUNNING; ``completed`` FINISHED when ``metadata.workflow.success``
is true, else FAILED with its ``errorMessage`` and ``exitStatus``; every other event is a task
record. A task record keeps the trace's identifying and timing fields, never the task's
``script`` or ``env``. ``metadata.parameters`` (what Nextflow sends) and ``metadata.params``
(what the plugin's README shows) are both read, and so are ``success``, ``exitStatus`` and
``errorMessage`` beside ``workflow`` (where the README's example puts some of them).
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..bundled_schemas import Misfit
from ..documents import canonical_json
from ..intake import Intake
from ..limits import event_id_or_none
from ..message_types import ReportMessage
from .base import MINE, NOT_MINE, Verdict, bounded, job_uuid, misfit, text

VIA = "nextflow"
SCHEDULER = True
CHANNELS = frozenset({"messages", "nextflow"})

#: What a task record keeps of a trace: never ``script`` or ``env`` (a task's code and environment).
TRACE_FIELDS = (
    "task_id",
    "process",
    "name",
    "tag",
    "status",
    "exit",
    "hash",
    "native_id",
    "attempt",
    "submit",
    "start",
    "complete",
    "duration",
    "realtime",
    "cpus",
    "memory",
    "workdir",
    "container",
    "error_action",
)
#: What a workflow's metadata keeps of ``metadata.workflow``.
WORKFLOW_FIELDS = (
    "runName",
    "sessionId",
    "projectDir",
    "start",
    "complete",
    "duration",
    "success",
    "exitStatus",
    "errorMessage",
    "errorReport",
    "resume",
)


def recognise(intake: Intake) -> Verdict:
    body = intake.body
    if isinstance(body, dict) and isinstance(body.get("event"), str) and "runId" in body and "runName" in body:
        return MINE
    if intake.channel == "nextflow":  # its own route: say what a weblog post looks like
        return misfit(Misfit("Nextflow weblog post", reason="a JSON object with runId, runName and event"))
    return NOT_MINE


def _scalar(value: Any) -> Any:
    """A trace or metadata value as kept: numbers and booleans as they are, anything else as short text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return text(value, 1000)


def trace_fields(trace: Any) -> dict[str, Any]:
    if not isinstance(trace, dict):
        return {}
    return {name: _scalar(trace[name]) for name in TRACE_FIELDS if name in trace}


def _metadata(body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(``metadata.workflow``'s kept fields, the run's parameters) from either metadata shape."""
    metadata: dict[str, Any] = body["metadata"] if isinstance(body.get("metadata"), dict) else {}
    workflow: dict[str, Any] = metadata["workflow"] if isinstance(metadata.get("workflow"), dict) else {}
    kept = {name: _scalar(workflow[name]) for name in WORKFLOW_FIELDS if name in workflow}
    for name in ("success", "exitStatus", "errorMessage", "resume", "duration"):  # the README's flatter shape
        if name not in kept and name in metadata:
            kept[name] = _scalar(metadata[name])
    engine = workflow.get("nextflow")
    if isinstance(engine, dict) and "version" in engine:
        kept["nextflowVersion"] = _scalar(engine["version"])
    parameters = metadata.get("parameters", metadata.get("params"))
    return kept, parameters


def delivery_id(body: dict[str, Any]) -> str | None:
    """``nextflow:<sha256 of the body's canonical JSON, 40 hex digits>``: equal bodies are one report."""
    digest = hashlib.sha256(canonical_json(body).encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return event_id_or_none(f"nextflow:{digest}")


def to_message(intake: Intake) -> ReportMessage:
    body: dict[str, Any] = intake.body
    params = intake.params
    where = "set the uuid URL parameter of the weblog url, or run with NXF_UUID=<job uuid>"
    uuid = job_uuid(params.get("uuid") or body.get("runId"), where)
    event = text(body["event"], 64) or "unknown"
    data: dict[str, Any] = {
        "report": event,
        "run_name": text(body.get("runName"), 256),
        "run_id": text(body.get("runId"), 64),
        "utc_time": text(body.get("utcTime"), 64),
    }
    effect = None
    if "trace" in body:
        data["trace"] = trace_fields(body["trace"])
    if "metadata" in body:
        workflow, parameters = _metadata(body)
        data["workflow"] = workflow
        if parameters is not None:
            data["parameters"] = bounded(parameters)
    if event == "started":
        effect = "run"
    elif event == "completed":
        workflow = data.get("workflow") or {}
        effect = "finish" if workflow.get("success") is True else "fail"
    return ReportMessage(
        uuid=uuid,
        name=event,
        via=VIA,
        data=data,
        token=params.get("token") or None,
        effect=effect,
        event_id=delivery_id(body),
    )
