"""Retention: finished and hidden jobs are purged with their log after a while, leaving a tombstone.

Jobs in ``retention.states`` (terminal states: RETIRED, optionally FAILED, REJECTED, FINALIZED) and
hidden jobs not updated for ``retention.days`` (per pipeline under ``retention.pipelines``) are
purged, each in one all-or-nothing step conditional on its revision, so a job that changes while a
pass runs is kept. Run by `pipelinejobs retention` and by serve's watchdog loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from . import documents
from .logs import get_logger
from .settings import Settings
from .store.base import JobStore
from .store.records import Document

log = get_logger("retention")

DEFAULT_BATCH = 1000


# -- settings --------------------------------------------------------------------------------
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
    """The ``retention`` section, typed and checked at load (``settings_schema``)."""
    return Retention(
        days=settings.value("retention", "days"),
        states=tuple(settings.value("retention", "states")),
        hidden=bool(settings.value("retention", "hidden")),
        tombstone_days=int(settings.value("retention", "tombstone_days")),
        pipelines=dict(settings.value("retention", "pipelines")),
    )


def purgeable(head: Document, retention: Retention, now: datetime) -> bool:
    """True when a job is past its pipeline's retention: terminal (a chosen state) or hidden, and old enough."""
    days = retention.days_for(head.get("pipeline_uuid"))
    updated = head.get("updated")
    if not days or not isinstance(updated, datetime):
        return False
    old = documents.as_utc(updated, now) <= now - timedelta(days=days)
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
    now = documents.as_utc(now, now)
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
            if store.purge_job(head["uuid"], expected_revision=documents.revision(head), tombstone=tombstone):
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
                "revision": documents.revision(head),
            }
        },
        "_admin": dict(head.get("_admin") or {}),
        "expires_at": stamp + timedelta(days=retention.tombstone_days),
    }
