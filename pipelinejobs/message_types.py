"""The typed messages an intake format turns a received message into; the service applies them.

Credentials (``token``) are fields that never appear in a repr (a log line, a traceback).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EventMessage:
    uuid: str
    name: str
    token: str | None = field(default=None, repr=False)  # a credential: never in a repr (a log line, a traceback)
    data: dict[str, Any] | None = None
    via: str = "message"  # the intake format that made it: message | url | agave | tapis | nextflow | snakemake
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


#: What a report's ``effect`` may be: the job event it stands for.
REPORT_EFFECTS = ("run", "finish", "fail")


@dataclass(frozen=True)
class ReportMessage:
    """A workflow engine's report on the run a job stands for (Snakemake, Nextflow).

    Every report is kept in the job's event log. Most are *task records* (a rule or process
    started, finished, failed): logged with outcome ``task``, the job's state, revision and
    history window unchanged. A report with an ``effect`` (the workflow started, succeeded
    or failed) is that event applied to the job, and the first report on a CREATED job
    makes it RUNNING. ``progress`` changes the job document's ``progress`` summary: keys are
    paths under it (``done``, ``failed.12``), a None value removes the key.
    """

    uuid: str
    name: str  # the engine's own word for it: job_finished, process_completed, started...
    via: str  # the intake format: snakemake | nextflow
    data: dict[str, Any]
    token: str | None = field(default=None, repr=False)
    effect: str | None = None  # one of REPORT_EFFECTS, or None for a task record
    progress: dict[str, Any] = field(default_factory=dict)
    event_id: str | None = None  # a delivery id: a repeated delivery is answered, not kept again


Message = EventMessage | DeleteMessage | CreateMessage | ReportMessage
