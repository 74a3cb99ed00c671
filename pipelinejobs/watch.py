"""The watchdog: jobs past their deadlines are failed, through the same append as any event.

A job's *watch record* (kept apart from its datacatalog document, one per job) says
which state it was last seen entering (``state``, ``since``), when it was last heard
from (``last_seen``: a transition or a heartbeat; plain events are read from the
job's ``updated``), its own deadline overrides, and ``due_at``: the earliest moment
one of its deadlines could run out. The watchdog reads only the records whose
``due_at`` has come (an index range), judges each against the job itself
(``deadlines.judge``), and fails an overdue job through ``service.fail_overdue``,
conditional on the job's revision not having moved since it was judged: a real event
racing it wins, and two watchdogs never fail a job twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import documents, retention, service
from .deadlines import MEANING, due_at, effective_deadlines, judge
from .errors import ErrorKind, PipelineJobsError
from .logs import get_logger
from .settings import Settings
from .store.base import JobStore
from .store.records import Document

log = get_logger("watch")

DEFAULT_BATCH = 1000


def watch_every(settings: Settings) -> float:
    """Seconds between passes of serve's watchdog (``deadlines.watch_every_seconds``); 0 (the default): off."""
    return float(settings.value("deadlines", "watch_every_seconds"))


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
    now = documents.as_utc(now, now)
    report = PassReport(dry_run=dry_run)
    seen: set[str] = set()
    while True:
        due = [r for r in store.due_watches(now, limit=batch) if r["uuid"] not in seen]
        if not due:
            return report
        for record in due:
            seen.add(record["uuid"])
            report.judged += 1
            _judge_one(store, settings, record, now, report, dry_run)
        if dry_run or len(due) < batch:
            return report


def _judge_one(
    store: JobStore,
    settings: Settings,
    record: Document,
    now: datetime,
    report: PassReport,
    dry_run: bool,
) -> None:
    uuid = record["uuid"]
    head = store.find_head(uuid)
    if head is None:
        store.forget_watch(uuid)
        return
    state, revision = str(head.get("state")), documents.revision(head)
    updated = documents.as_utc(head.get("updated"), now)
    since = documents.as_utc(record.get("since"), updated)
    last_seen = max(documents.as_utc(record.get("last_seen"), updated), updated)  # a plain event is a sign of life too
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
        service.fail_overdue(
            store,
            settings,
            uuid=uuid,
            state=state,
            expected_revision=revision,
            data=overdue.data(now),
            now=now,
            pipeline_uuid=head.get("pipeline_uuid"),
        )
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
    """Call ``work`` every ``every`` seconds until ``stop()``; a failed pass is logged and the loop goes on,
    whatever it raised (a bug in one pass must not end the watchdog for good, silently)."""
    while not stop():
        started = time.monotonic()
        try:
            work()
        except PipelineJobsError as exc:
            log.error("watchdog pass failed (%s): %s", exc.kind.value, exc.message)
        except Exception as exc:
            log.error("watchdog pass failed (%s)", type(exc).__name__, exc_info=exc)
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
        retention.retention_pass(store, settings, now)

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
