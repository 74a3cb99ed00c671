"""Snakemake's reports, in the panoptes protocol (Snakemake 9 with ``snakemake-logger-plugin-panoptes``,
Snakemake 7/8 with ``--wms-monitor``), as serve's ``/snakemake`` route reads them (``server/engines.py``).

The route gives this format the request's action and what its address carried:

- ``create_workflow`` (``GET``), asked once per run before its first report: with
  ``workflow_id=<job uuid>`` it is the run's first report on that existing job (which it makes
  RUNNING); without one, an address ending ``/pipeline/<pipeline uuid>`` creates a new job of
  that pipeline (a fresh ``data.snakemake.run`` id makes every run a job of its own; 7/8's
  ``--wms-monitor-arg NAME=VALUE`` land in ``data.snakemake.args``).
- ``update_workflow_status`` (``POST``): ``msg`` (a JSON text), ``timestamp`` and ``id`` (what
  ``create_workflow`` answered), as a form or JSON. ``PUT`` or ``POST /api/workflow/<id>``
  (Snakemake 8; 8.30 POSTs) is kept as a ``workflow`` report.

Job: the ``id`` Snakemake sends back, ``<job uuid>`` or ``<job uuid>.<job token>``.
Delivery id: a digest of the message when it carries Snakemake's own time (7/8, which send
each message twice), else none.
Credential: the job's token from the address (``.../job/<token>``), else from the ``id`` (a job
this route created answers ``<uuid>.<token>``: the Snakemake 9 plugin sends no header and keeps
nothing else). The nonce (or serve's API token) that authenticates the request to serve is the
route's to check; it never stands for the job token.

What becomes of each ``level``: the first report makes the job RUNNING; ``progress`` keeps
``done``/``total`` on the job (``progress`` in the job document) and, once ``done`` reaches
``total``, FINISHES it (under ``--retries`` the plugin sends no ``workflow_success`` after a
failed attempt); ``workflow_success`` FINISHES it; an ``error`` that is not one rule job's
(``WorkflowError``, ``MissingInputException``...) FAILS it, naming the rules whose jobs started
and never finished; ``job_info``/``job_started``/``job_finished``/``job_error``, a rule job's
``error`` (``RuleException``, ``MissingOutputException``: it may be retried, or ``--keep-going``
go on; 9.x sends the exception's name, 8.x ``Name:`` and its text) and every other level, known
or not, are task records. A task record keeps a rule job's
rule, jobid, wildcards, outputs, logs, reason and error, never its shell command.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from ..bundled_schemas import fits, refusal
from ..documents import canonical_json
from ..errors import ErrorKind, PipelineJobsError
from ..identifiers import default_archive_path
from ..intake import Intake
from ..limits import event_id_or_none
from ..message_types import CreateMessage, Message, ReportMessage
from .base import MINE, Verdict, bounded, capped_list, job_uuid, text

VIA = "snakemake"
SCHEDULER = True
CHANNELS = frozenset({"snakemake"})

CREATE, WORKFLOW = "create_workflow", "workflow"
#: ``error`` messages about one rule job: it may be retried, or the workflow go on (``--keep-going``).
JOB_ERRORS = frozenset(
    {"RuleException", "MissingOutputException", "ImproperOutputException", "ProtectedOutputException"}
)


def recognise(intake: Intake) -> Verdict:
    return MINE  # its own route's requests only (CHANNELS)


def to_message(intake: Intake) -> Message:
    action = intake.params.get("action")
    if action == CREATE:
        return _create_workflow(intake)
    uuid, token = _job_of(intake.params.get("id"), intake.params.get("path_token"))
    if action == WORKFLOW:
        return ReportMessage(uuid, WORKFLOW, VIA, {"report": WORKFLOW, "body": bounded(intake.body, 16384)}, token)
    body = intake.body if isinstance(intake.body, dict) else {}
    return _update(uuid, token, body.get("msg"), body.get("timestamp"))


def _job_of(workflow_id: str | None, path_token: str | None) -> tuple[str, str | None]:
    """(job uuid, job token) from the id Snakemake sends back and the token of the address."""
    uuid, _, token = (workflow_id or "").strip().partition(".")
    return job_uuid(uuid, "the id is not one that create_workflow answered"), path_token or token or None


def _create_workflow(intake: Intake) -> Message:
    params = intake.params
    query = intake.body if isinstance(intake.body, dict) else {}
    args = bounded({str(k)[:64]: text(v, 256) for k, v in query.items()}, 8192)  # 7/8's --wms-monitor-arg
    if params.get("workflow_id"):
        uuid = job_uuid(params["workflow_id"], "workflow_id must be the uuid of the job the run reports on")
        data: dict[str, Any] = {"report": CREATE, **({"args": args} if args else {})}
        return ReportMessage(uuid, CREATE, VIA, data, params.get("path_token") or None)
    pipeline = params.get("pipeline")
    if not pipeline:
        raise PipelineJobsError(
            ErrorKind.BAD_MESSAGE,
            "create_workflow needs ?workflow_id=<job uuid> (the address ending /job/<job token>), or an address"
            " ending /pipeline/<pipeline uuid> to create a job for each run",
        )
    data = {"snakemake": {"run": secrets.token_hex(8), **({"args": args} if args else {})}}
    archive_path = default_archive_path(pipeline, [], data)
    create = {"pipeline_uuid": pipeline, "archive_path": archive_path, "data": data}
    if not fits("create", create):
        raise refusal("create", "the pipeline of the address", create)
    return CreateMessage(pipeline_uuid=pipeline, archive_path=archive_path, data=data)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53 else None


def _jobid(value: Any) -> str | None:
    """A rule job's id as a progress key (``unfinished.<jobid>``), or None when it is not a small integer."""
    number = _count(value)
    return None if number is None else str(number)


def delivery_id(message: dict[str, Any]) -> str | None:
    """``snakemake:<digest of the message>`` when it carries Snakemake's own time, else None.

    Snakemake 7/8 stamp each message with ``time.time()`` (a float) and 8.x sends every one twice:
    equal messages with one stamp are one report. The 9.x plugin's messages carry no time of their
    own (only the form's one-second ``timestamp``), so two equal ones may be two reports: no id.
    """
    if not isinstance(message.get("timestamp"), float):
        return None
    digest = hashlib.sha256(canonical_json(message).encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return event_id_or_none(f"snakemake:{digest}")


def _update(uuid: str, token: str | None, msg: Any, timestamp: Any) -> ReportMessage:
    message = msg if isinstance(msg, dict) else {"level": "unknown", "msg": msg}
    level = text(message.get("level"), 64) or "unknown"
    data: dict[str, Any] = {"report": level}
    effect: str | None = None
    progress: dict[str, Any] = {}
    jobid = _jobid(message.get("jobid"))
    if level == "progress":
        done, total = _count(message.get("done")), _count(message.get("total"))
        data.update(done=done, total=total)
        if done is not None and total is not None:
            progress.update(done=done, total=total)
            if total > 0 and done >= total:
                effect = "finish"
    elif level == "workflow_success":
        effect = "finish"
    elif level == "job_info":
        rule = text(message.get("name"), 256) or "?"
        data.update(
            jobid=_count(message.get("jobid")),
            rule=rule,
            wildcards=bounded(message.get("wildcards") or {}, 8192),
            output=capped_list(message.get("output")),
            log=capped_list(message.get("log")),
            reason=text(message.get("reason"), 1000),
        )
        if jobid is not None:
            progress[f"unfinished.{jobid}"] = rule
    elif level == "job_started":
        jobs = message.get("jobs")
        data["jobids"] = [_count(j) for j in jobs[:1000]] if isinstance(jobs, list) else []
    elif level == "job_finished":
        data["jobid"] = _count(message.get("jobid"))
        if jobid is not None:
            progress[f"unfinished.{jobid}"] = None
    elif level == "job_error":
        data.update(jobid=_count(message.get("jobid")), rule=text(message.get("name"), 256))
    elif level == "error":
        error = text(message.get("msg"), 1000)
        data.update(
            error=error,
            rule=text(message.get("rule"), 256),
            location=text(message.get("location"), 1000),
            traceback=text(message.get("traceback"), 8000),
        )
        if (error or "").split(":", 1)[0].strip() not in JOB_ERRORS:  # 9.x sends the name, 8.x "Name:\n..."
            effect = "fail"
    elif level in ("info", "warning", "debug"):
        data["msg"] = text(message.get("msg"), 2000)
    elif level == "shellcmd":
        data["jobid"] = _count(message.get("jobid"))  # the command itself is not kept: it may hold secrets
    else:  # a level this version does not know: kept whole, as text if it must be
        data["message"] = bounded(message, 16384)
    data["timestamp"] = text(timestamp, 64)  # Snakemake's own time.asctime(), as sent
    event_id = delivery_id(message)
    return ReportMessage(uuid, level, VIA, data, token, effect=effect, progress=progress, event_id=event_id)
