"""serve's background loops survive whatever a pass raises: they log it and go on.

A loop that ended on an unexpected exception would end silently (a daemon thread's death is
not an error anyone sees): deadlines would stop being enforced, notifications stop going out,
execution records stop being stored. Each loop is driven here into a bug-like exception (not a
``PipelineJobsError``) on its first pass, and must log it and do its work on the next.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from pipelinejobs import watch
from pipelinejobs.notify import dispatcher
from pipelinejobs.server.recorder import WriteBehind
from pipelinejobs.settings import load_settings
from pipelinejobs.store.registry import SqliteRegistry
from pipelinejobs.store.sqlite import SqliteJobStore
from tests.conftest import ROOT

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_the_watchdog_loop_goes_on_after_a_pass_raises_anything(caplog: pytest.LogCaptureFixture) -> None:
    passes: list[int] = []
    stop = threading.Event()

    def work() -> None:
        passes.append(len(passes))
        if len(passes) == 1:
            raise KeyError("a bug in the first pass")
        if len(passes) == 3:
            stop.set()

    caplog.set_level(logging.ERROR, logger="pipelinejobs.watch")
    watch.run_every(0.0, work, stop=stop.is_set, sleep=lambda seconds: None)
    assert passes == [0, 1, 2]
    assert any("watchdog pass failed (KeyError)" in r.getMessage() for r in caplog.records)


class FailingOnce(SqliteJobStore):
    """A real embedded store whose first outbox claim raises as a bug would (fault injection, not a mock)."""

    claims = 0

    def claim_notifications(self, now: datetime, *, until: datetime, owner: str, limit: int) -> list[Any]:
        FailingOnce.claims += 1
        if FailingOnce.claims == 1:
            raise RuntimeError("a bug in the first pass")
        return super().claim_notifications(now, until=until, owner=owner, limit=limit)


def test_the_notification_dispatcher_goes_on_after_a_pass_raises_anything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings({"_REACTOR_NOTIFICATIONS_EVERY_SECONDS": "0.05"}, ROOT / "config.yml")
    caplog.set_level(logging.ERROR, logger="pipelinejobs.notify")
    with FailingOnce(tmp_path / "jobs.sqlite3") as store:
        stop = dispatcher.start_background(store, settings, lambda: NOW)
        assert stop is not None
        try:
            assert wait_for(lambda: FailingOnce.claims >= 3), FailingOnce.claims  # it passed again, twice
        finally:
            stop()
    assert any("notification pass failed (RuntimeError)" in r.getMessage() for r in caplog.records)


class BrokenOnce(SqliteRegistry):
    """A real registry file whose first batch write raises as a bug would."""

    writes = 0

    def save_executions(self, executions: list[dict[str, Any]]) -> None:
        BrokenOnce.writes += 1
        if BrokenOnce.writes == 1:
            raise ZeroDivisionError("a bug in the first batch")
        super().save_executions(executions)


def test_the_execution_recorder_keeps_its_records_and_goes_on_after_a_write_raises_anything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="pipelinejobs.server.recorder")
    inner = BrokenOnce(tmp_path / "registry.sqlite")
    recorder = WriteBehind(inner, interval=0.01)
    received = NOW.isoformat()
    record = {"id": "exec1", "actorId": "actor1", "messageReceivedTime": received, "status": "COMPLETE"}
    try:
        recorder.save_execution(record)
        assert wait_for(lambda: BrokenOnce.writes >= 2)
        assert wait_for(lambda: inner.get_execution("actor1", "exec1") is not None)
    finally:
        recorder.close()
    assert any("execution records not stored yet" in r.getMessage() for r in caplog.records)
    assert SqliteRegistry(tmp_path / "registry.sqlite").get_execution("actor1", "exec1") == record


def test_a_loop_that_raised_still_stops_when_asked() -> None:
    """Surviving is not running away: the watchdog loop stops at once when asked, even after a failure."""
    stop = threading.Event()
    calls = 0

    def work() -> None:
        nonlocal calls
        calls += 1
        stop.set()
        raise ValueError("and stop")

    started = time.monotonic()
    watch.run_every(timedelta(hours=1).total_seconds(), work, stop=stop.is_set, sleep=stop.wait)
    assert calls == 1 and time.monotonic() - started < 5
