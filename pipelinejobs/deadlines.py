"""Deadlines as pure decisions: which apply in which state, when a job is next due, and whether it is overdue.

No I/O and no clock: the event path (``service``) uses these to make and move a job's watch
record, and the watchdog (``watch``) to judge the records that have come due. A job's deadlines
are the config's defaults, then its pipeline's (``deadlines.pipelines.<uuid>``), then its own
(``__options.deadlines`` at create).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import documents, fsm
from .errors import ErrorKind, PipelineJobsError
from .settings import Settings
from .settings_schema import DEADLINE_NAMES

#: The deadlines, in seconds; None means "no limit".
DEADLINES = DEADLINE_NAMES
#: What each deadline limits, for people.
MEANING = {
    "created_seconds": "CREATED without run",
    "silent_seconds": "RUNNING without any event or heartbeat",
    "running_seconds": "RUNNING in total",
    "validating_seconds": "VALIDATING or INDEXING in total",
}


# -- settings ---------------------------------------------------------------------------------
def _seconds(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def check_deadlines(value: Any) -> dict[str, int | None]:
    """A job's own deadline overrides (``__options.deadlines`` at create), or BAD_MESSAGE saying why not."""
    if not isinstance(value, dict):
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, "__options.deadlines must be an object")
    checked: dict[str, int | None] = {}
    for key, seconds in value.items():
        if key not in DEADLINES:
            raise PipelineJobsError(
                ErrorKind.BAD_MESSAGE,
                f"__options.deadlines: unknown deadline {str(key)[:40]!r} (known: {', '.join(DEADLINES)})",
            )
        if seconds is not None and _seconds(seconds) is None:
            raise PipelineJobsError(
                ErrorKind.BAD_MESSAGE, f"__options.deadlines.{key}: must be a positive whole number of seconds or null"
            )
        checked[key] = seconds
    return checked


def effective_deadlines(
    settings: Settings, pipeline_uuid: str | None, own: Mapping[str, Any] | None
) -> dict[str, int | None]:
    """Config defaults, then the pipeline's section (``deadlines.pipelines.<uuid>``), then the job's own.

    The settings are typed at load (``settings_schema``); the job's own were checked at create
    (:func:`check_deadlines`) and are read back from its watch record.
    """
    result: dict[str, int | None] = {name: settings.value("deadlines", name) for name in DEADLINES}
    result.update(settings.value("deadlines", "pipelines").get(pipeline_uuid or "", {}))
    for name, value in (own or {}).items():
        if name in result:
            result[name] = _seconds(value)
    return result


def heartbeat_log_interval(settings: Settings) -> int:
    return int(settings.value("deadlines", "heartbeat_log_interval_seconds"))


# -- pure decisions -------------------------------------------------------------------------
@dataclass(frozen=True)
class Overdue:
    """Which deadline ran out: its name, its value, and the moment it counted from."""

    deadline: str
    seconds: int
    since: datetime
    last_seen: datetime

    def data(self, now: datetime) -> dict[str, Any]:
        """The ``fail`` event's data: enough for a person to see why, in plain JSON."""
        return {
            "watchdog": {
                "deadline": self.deadline,
                "meaning": MEANING[self.deadline],
                "seconds": self.seconds,
                "since": self.since.isoformat(),
                "last_seen": self.last_seen.isoformat(),
                "judged_at": documents.utc_seconds(now).isoformat(),
            }
        }


Limit = tuple[datetime, str, datetime]

#: The one rule of which deadlines apply in which state, and what each counts from: the moment the job
#: entered the state (``since``) or its last sign of life (``last_seen``). States not named have none.
RULES: dict[str, tuple[tuple[str, str], ...]] = {
    fsm.State.CREATED.value: (("created_seconds", "since"),),
    fsm.State.RUNNING.value: (("silent_seconds", "last_seen"), ("running_seconds", "since")),
    fsm.State.VALIDATING.value: (("validating_seconds", "since"),),
    fsm.State.INDEXING.value: (("validating_seconds", "since"),),
}


def entry_deadlines(state: str) -> tuple[str, ...]:
    """The deadlines that apply in ``state``: on entering it, each counts from that moment (the job's
    last sign of life is that moment too), so the stores set ``due_at`` to now plus the smallest."""
    return tuple(name for name, _ in RULES.get(state, ()))


def _limits(state: str, since: datetime, last_seen: datetime, deadlines: Mapping[str, int | None]) -> list[Limit]:
    """(moment it runs out, deadline, anchor) for each deadline that applies in ``state``."""
    anchors = {"since": since, "last_seen": last_seen}
    applicable = [(name, anchors[counts_from]) for name, counts_from in RULES.get(state, ())]
    out = []
    for name, anchor in applicable:
        seconds = deadlines.get(name)
        if seconds:
            out.append((anchor + timedelta(seconds=seconds), name, anchor))
    return out


def due_at(state: str, since: datetime, last_seen: datetime, deadlines: Mapping[str, int | None]) -> datetime | None:
    """The earliest moment a deadline can run out (None: no deadline applies in this state)."""
    limits = _limits(state, since, last_seen, deadlines)
    return min(limit[0] for limit in limits) if limits else None


def judge(
    state: str, since: datetime, last_seen: datetime, deadlines: Mapping[str, int | None], now: datetime
) -> Overdue | None:
    """The deadline a job in ``state`` has overrun at ``now`` (the one that ran out first), or None."""
    overrun = sorted(limit for limit in _limits(state, since, last_seen, deadlines) if limit[0] <= now)
    if not overrun:
        return None
    _, name, _ = overrun[0]
    return Overdue(name, int(deadlines[name] or 0), since, last_seen)


def new_record(
    *,
    uuid: str,
    pipeline_uuid: str | None,
    state: str,
    revision: int,
    since: datetime,
    last_seen: datetime,
    own: Mapping[str, Any] | None,
    settings: Settings,
    logged_at: datetime | None = None,
) -> dict[str, Any]:
    """A watch record for a job that has just entered ``state`` (at ``since``)."""
    deadlines = effective_deadlines(settings, pipeline_uuid, own)
    return {
        "uuid": uuid,
        "pipeline_uuid": pipeline_uuid,
        "state": state,
        "revision": revision,
        "since": since,
        "last_seen": last_seen,
        "due_at": due_at(state, since, last_seen, deadlines),
        "deadlines": dict(own) if own else None,
        "effective": deadlines,  # what a later transition's due_at is computed from, in one write
        "logged_at": logged_at,
    }
