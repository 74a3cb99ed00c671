"""Deadlines, the watchdog and retention: decisions as pure functions, then the passes that act on them.

A job's *watch record* (kept apart from its datacatalog document, one per job) says
which state it was last seen entering (``state``, ``since``), when it was last heard
from (``last_seen``: a transition or a heartbeat; plain events are read from the
job's ``updated``), its own deadline overrides, and ``due_at``: the earliest moment
one of its deadlines could run out. The watchdog reads only the records whose
``due_at`` has come (an index range), judges each against the job itself, and fails
an overdue job through the normal event path, conditional on the job's revision
not having moved since it was judged: a real event racing it wins, and two
watchdogs never fail a job twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from . import documents, fsm
from .errors import ErrorKind, PipelineJobsError
from .logs import get_logger
from .settings import Settings
from .store.base import Document, JobStore

log = get_logger("watch")

#: The deadlines, in seconds; None means "no limit".
DEADLINES = ("created_seconds", "silent_seconds", "running_seconds", "validating_seconds")
#: What each deadline limits, for people.
MEANING = {
    "created_seconds": "CREATED without run",
    "silent_seconds": "RUNNING without any event or heartbeat",
    "running_seconds": "RUNNING in total",
    "validating_seconds": "VALIDATING or INDEXING in total",
}
DEFAULT_HEARTBEAT_LOG_INTERVAL = 3600
DEFAULT_BATCH = 1000
DEFAULT_RETENTION_STATES = ("RETIRED",)
DEFAULT_TOMBSTONE_DAYS = 90


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
    """Config defaults, then the pipeline's section (``deadlines.pipelines.<uuid>``), then the job's own."""
    section = settings.section("deadlines")
    pipelines: dict[str, Any] = section["pipelines"] if isinstance(section.get("pipelines"), dict) else {}
    layers = [section, pipelines.get(pipeline_uuid or "") or {}, own or {}]
    result: dict[str, int | None] = {}
    for name in DEADLINES:
        value: int | None = None
        for layer in layers:
            if isinstance(layer, dict) and name in layer:
                value = _seconds(layer[name])
        result[name] = value
    return result


def heartbeat_log_interval(settings: Settings) -> int:
    return settings.positive("deadlines", "heartbeat_log_interval_seconds", DEFAULT_HEARTBEAT_LOG_INTERVAL)


def watch_every(settings: Settings) -> float:
    """Seconds between passes of serve's watchdog; 0 (the default) leaves it off.

    A string is accepted so ``_REACTOR_DEADLINES_WATCH_EVERY_SECONDS`` can turn it on.
    """
    value = settings.section("deadlines").get("watch_every_seconds")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return 0
    return float(value)


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


def _limits(state: str, since: datetime, last_seen: datetime, deadlines: Mapping[str, int | None]) -> list[Limit]:
    """(moment it runs out, deadline, anchor) for each deadline that applies in ``state``."""
    applicable: list[tuple[str, datetime]] = []
    if state == fsm.State.CREATED.value:
        applicable = [("created_seconds", since)]
    elif state == fsm.State.RUNNING.value:
        applicable = [("silent_seconds", last_seen), ("running_seconds", since)]
    elif state in (fsm.State.VALIDATING.value, fsm.State.INDEXING.value):
        applicable = [("validating_seconds", since)]
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
) -> Document:
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


def _utc(moment: Any, default: datetime) -> datetime:
    if not isinstance(moment, datetime):
        return default
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _revision(head: Document) -> int:
    revision = (head.get("_properties") or {}).get("revision")
    return revision if isinstance(revision, int) and not isinstance(revision, bool) else 0


#: The deadlines that count from the moment a job enters each state (its last sign of life is that moment too).
ENTRY_DEADLINES: dict[str, tuple[str, ...]] = {
    fsm.State.CREATED.value: ("created_seconds",),
    fsm.State.RUNNING.value: ("silent_seconds", "running_seconds"),
    fsm.State.VALIDATING.value: ("validating_seconds",),
    fsm.State.INDEXING.value: ("validating_seconds",),
}


def note_transition(store: JobStore, settings: Settings, uuid: str, state: str, revision: int, now: datetime) -> None:
    """Record that a job entered ``state`` at ``now`` (called after an applied state change).

    One write, no read: the record's ``effective`` deadlines (resolved when it was made) give the
    new ``due_at``, so a state change costs the event path a single extra command. Best effort: the
    event is already applied, so a failure here is logged, not raised; a watch record that missed a
    transition is put right by the next pass that judges it.
    """
    try:
        store.enter_state(uuid, state=state, revision=revision, now=now, deadlines=ENTRY_DEADLINES.get(state, ()))
    except PipelineJobsError as exc:
        log.warning("job %s: its watch record was not updated (%s); the watchdog will correct it", uuid, exc.kind.value)


# -- the watchdog pass ------------------------------------------------------------------------
@dataclass
class PassReport:
    """What one pass did: jobs failed, would have been failed (dry run), rescheduled, lost to a real event."""

    judged: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    rescheduled: int = 0
    lost_races: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "judged": self.judged,
            "failed" if not self.dry_run else "would_fail": self.failed,
            "rescheduled": self.rescheduled,
            "lost_races": self.lost_races,
            "dry_run": self.dry_run,
        }


def watch_pass(
    store: JobStore,
    settings: Settings,
    now: datetime,
    *,
    dry_run: bool = False,
    batch: int = DEFAULT_BATCH,
) -> PassReport:
    """Judge every job whose ``due_at`` has come and fail the overdue ones (one pass)."""
    from . import service

    now = _utc(now, now)
    report = PassReport(dry_run=dry_run)
    seen: set[str] = set()
    while True:
        due = [r for r in store.due_watches(now, limit=batch) if r["uuid"] not in seen]
        if not due:
            return report
        for record in due:
            seen.add(record["uuid"])
            report.judged += 1
            _judge_one(store, settings, record, now, report, dry_run, service.fail_overdue)
        if dry_run or len(due) < batch:
            return report


def _judge_one(
    store: JobStore,
    settings: Settings,
    record: Document,
    now: datetime,
    report: PassReport,
    dry_run: bool,
    fail: Callable[..., dict[str, Any]],
) -> None:
    uuid = record["uuid"]
    head = store.find_head(uuid)
    if head is None:
        store.forget_watch(uuid)
        return
    state, revision = str(head.get("state")), _revision(head)
    updated = _utc(head.get("updated"), now)
    since = _utc(record.get("since"), updated)
    last_seen = max(_utc(record.get("last_seen"), updated), updated)  # a plain event is a sign of life too
    if record.get("state") != state:
        since = updated  # a transition the record missed: count from the job's last event, never earlier
    deadlines = effective_deadlines(settings, record.get("pipeline_uuid"), record.get("deadlines"))
    overdue = judge(state, since, last_seen, deadlines, now) if head.get("_visible") is not False else None
    if overdue is None:
        if dry_run:
            return
        changes = {
            "state": state,
            "since": since,
            "last_seen": last_seen,
            "due_at": due_at(state, since, last_seen, deadlines) if head.get("_visible") is not False else None,
        }
        if store.touch_watch(uuid, revision=int(record.get("revision") or 0), changes=changes):
            report.rescheduled += 1
        return
    entry = {"uuid": uuid, "state": state, "revision": revision, **overdue.data(now)["watchdog"]}
    if dry_run:
        report.failed.append(entry)
        return
    latest = store.watch_record(uuid)  # a heartbeat does not move the revision: look once more, just before
    if latest is not None and latest.get("last_seen") != record.get("last_seen"):
        report.lost_races += 1
        return  # judged again on the next pass, from the fresh sign of life
    try:
        fail(store, settings, uuid=uuid, state=state, expected_revision=revision, data=overdue.data(now), now=now)
    except PipelineJobsError as exc:
        if exc.kind in (ErrorKind.CONFLICT, ErrorKind.INVALID_TRANSITION, ErrorKind.NOT_FOUND):
            report.lost_races += 1  # a real event (or another watchdog) got there first: it wins
            log.info("job %s changed after it was judged overdue; not failed", uuid)
            return
        raise
    report.failed.append(entry)
    log.warning("job %s failed by the watchdog: %s (%s s) ran out", uuid, MEANING[overdue.deadline], overdue.seconds)


def run_every(
    every: float,
    work: Callable[[], Any],
    *,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], Any] = time.sleep,
) -> None:
    """Call ``work`` every ``every`` seconds until ``stop()``; a failed pass is logged and the loop goes on."""
    while not stop():
        started = time.monotonic()
        try:
            work()
        except PipelineJobsError as exc:
            log.error("watchdog pass failed: %s", exc.message)
        sleep(max(0.0, every - (time.monotonic() - started)))


def start_background(
    store: JobStore, settings: Settings, clock: Callable[[], datetime], every: float
) -> Callable[[], None]:
    """serve's watchdog: a daemon thread running a watch and a retention pass every ``every`` seconds.

    Returns the function that stops it (and waits for a pass in progress). A thread, not an
    asyncio task, because the store's calls block; the store objects are safe across threads.
    """
    stopping = threading.Event()

    def one_pass() -> None:
        now = clock()
        watch_pass(store, settings, now)
        retention_pass(store, settings, now)

    thread = threading.Thread(
        target=run_every,
        args=(every, one_pass),
        kwargs={"stop": stopping.is_set, "sleep": stopping.wait},
        name="pipelinejobs-watchdog",
        daemon=True,
    )
    thread.start()
    log.info("watchdog started: a pass every %s s", every)

    def stop() -> None:
        stopping.set()
        thread.join(timeout=30)

    return stop


# -- retention --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Retention:
    """How long finished and hidden jobs are kept, per pipeline, and how long their tombstones last."""

    days: int | None
    states: tuple[str, ...]
    hidden: bool
    tombstone_days: int
    pipelines: Mapping[str, int | None]

    def days_for(self, pipeline_uuid: str | None) -> int | None:
        if pipeline_uuid is not None and pipeline_uuid in self.pipelines:
            return self.pipelines[pipeline_uuid]
        return self.days

    def shortest(self) -> int | None:
        values = [d for d in (self.days, *self.pipelines.values()) if d]
        return min(values) if values else None


def retention_settings(settings: Settings) -> Retention:
    section = settings.section("retention")
    states = section.get("states")
    valid = {s.value for s in fsm.TERMINAL_STATES}
    if isinstance(states, str):  # config.yml's comma-separated form (and _REACTOR_RETENTION_STATES)
        states = [word for word in states.replace(",", " ").split() if word]
    chosen = tuple(s for s in states if s in valid) if isinstance(states, list) else DEFAULT_RETENTION_STATES
    pipelines: dict[str, int | None] = {}
    for uuid, value in (section.get("pipelines") or {}).items():
        days = value.get("days") if isinstance(value, dict) else value
        pipelines[str(uuid)] = _seconds(days)
    return Retention(
        days=_seconds(section.get("days")),
        states=chosen,
        hidden=section.get("hidden", True) is not False,
        tombstone_days=_seconds(section.get("tombstone_days")) or DEFAULT_TOMBSTONE_DAYS,
        pipelines=pipelines,
    )


def purgeable(head: Document, retention: Retention, now: datetime) -> bool:
    """True when a job is past its pipeline's retention: terminal (a chosen state) or hidden, and old enough."""
    days = retention.days_for(head.get("pipeline_uuid"))
    updated = head.get("updated")
    if not days or not isinstance(updated, datetime):
        return False
    old = _utc(updated, now) <= now - timedelta(days=days)
    hidden = head.get("_visible") is False
    return old and ((hidden and retention.hidden) or str(head.get("state")) in retention.states)


@dataclass
class RetentionReport:
    candidates: int = 0
    purged: list[str] = field(default_factory=list)
    changed: int = 0
    tombstones_expired: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        key = "would_purge" if self.dry_run else "purged"
        expired = "tombstones_expiring" if self.dry_run else "tombstones_expired"
        return {key: len(self.purged), "jobs": self.purged, expired: self.tombstones_expired, "dry_run": self.dry_run}


def retention_pass(
    store: JobStore, settings: Settings, now: datetime, *, dry_run: bool = False, batch: int = DEFAULT_BATCH
) -> RetentionReport:
    """Purge jobs past retention (each with its log, leaving a tombstone) and expire old tombstones."""
    now = _utc(now, now)
    retention = retention_settings(settings)
    report = RetentionReport(dry_run=dry_run)
    report.tombstones_expired = store.expire_tombstones(now, dry_run=dry_run)
    shortest = retention.shortest()
    if shortest is None:
        return report
    before = now - timedelta(days=shortest)
    seen: set[str] = set()
    while True:
        hidden_before = before if retention.hidden else None
        heads = store.retention_candidates(
            states=list(retention.states), before=before, hidden_before=hidden_before, limit=batch
        )
        heads = [h for h in heads if h["uuid"] not in seen]
        if not heads:
            return report
        for head in heads:
            seen.add(head["uuid"])
            report.candidates += 1
            if not purgeable(head, retention, now):
                continue
            if dry_run:
                report.purged.append(head["uuid"])
                continue
            tombstone = purge_tombstone(head, retention, now)
            if store.purge_job(head["uuid"], expected_revision=_revision(head), tombstone=tombstone):
                report.purged.append(head["uuid"])
                log.info("job %s purged after retention; its tombstone is in 'updates'", head["uuid"])
            else:
                report.changed += 1
        if dry_run or len(heads) < batch:
            return report


def purge_tombstone(head: Document, retention: Retention, now: datetime) -> Document:
    """What stays of a purged job: who it was, its last state, when; gone itself after ``tombstone_days``."""
    stamp = documents.utc_seconds(now)
    return {
        "uuid": head["uuid"],
        "date": stamp,
        "action": "purge",
        "diff": {
            "purged": {
                "pipeline_uuid": head.get("pipeline_uuid"),
                "state": head.get("state"),
                "visible": head.get("_visible") is not False,
                "updated": head.get("updated"),
                "revision": _revision(head),
            }
        },
        "_admin": dict(head.get("_admin") or {}),
        "expires_at": stamp + timedelta(days=retention.tombstone_days),
    }
