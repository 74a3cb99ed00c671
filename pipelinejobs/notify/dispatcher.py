"""The outbox's dispatcher: claim a batch (a lease), learn each event's fate, have the sinks deliver, settle.

Each item is delivered at least once with capped exponential backoff and full jitter; one
notification id per (event, subscription) across retries; every attempt recorded; given up after
the configured number of attempts, or at once when a sink says its receiver refused it for good.
The dispatcher reads the outbox, the subscriptions and (for sinks that tell more than the event,
such as OpenLineage) the job, its pipeline and its log; it never writes a job document.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ..errors import PipelineJobsError
from ..logs import add_secrets, get_logger
from ..settings import Settings
from ..sinks import registry
from ..sinks.base import Attempt, Delivery, NoFacts, Outcome
from ..sinks.http import Clients
from ..store.base import JobStore, iter_history
from ..store.records import Document, EventRecord
from .budget import backoff, budget
from .deliveries import DrainReport, delivery_record
from .matching import SubscriptionIndex, subscriptions, wake_event
from .notification import message_id

if TYPE_CHECKING:
    from .. import egress
    from ..store.outbox import OutboxItem

log = get_logger("notify")

GATHER_SECONDS = 0.05  # after a wake-up, serve's dispatcher waits at least this long so a burst makes one batch
GATHER_PER_PASS = 2.0  # ... and this many times as long as its last pass took: at most a third of its time in passes
MAX_GATHER_SECONDS = 0.5  # ... up to this
EXPIRE_EVERY_SECONDS = 3600  # serve forgets delivery records past delivery_days this often
RECHECK_SECONDS = 0.1  # (MongoDB) an item whose event is logged but not yet applied is looked at again after this


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class StoreFacts:
    """What sinks may read of a job beyond its outbox item, each read once per pass."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._jobs: dict[str, Document | None] = {}
        self._pipelines: dict[str, Document | None] = {}
        self._logs: dict[str, list[EventRecord]] = {}
        self._lock = threading.Lock()  # deliveries of a pass may run in threads (notifications.workers)

    def job(self, uuid: str) -> Document | None:
        with self._lock:
            if uuid not in self._jobs:
                self._jobs[uuid] = self._store.find_job(uuid)
            return self._jobs[uuid]

    def pipeline(self, uuid: str) -> Document | None:
        with self._lock:
            if uuid not in self._pipelines:
                self._pipelines[uuid] = self._store.find_pipeline(uuid)
            return self._pipelines[uuid]

    def history(self, uuid: str) -> list[EventRecord]:
        with self._lock:
            if uuid not in self._logs:
                self._logs[uuid] = list(iter_history(self._store, uuid))
            return self._logs[uuid]


class Dispatcher:
    """Delivers the outbox: claim a batch (a lease), deliver, record, settle; over and over.

    Several dispatchers on one store (serve replicas, serve and a cron `notify --drain`) never
    deliver one item at the same time: the claim is a conditional write, and a crashed
    dispatcher's lease runs out after ``lease_seconds``.
    """

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        clock: Callable[[], datetime] = utc_now,
        *,
        policy: egress.Policy | None = None,
    ) -> None:
        import secrets

        self.store = store
        self.settings = settings
        self.clock = clock
        self.plan = budget(settings)
        self.http = Clients.from_settings(settings, policy)
        self.owner = "dispatcher-" + secrets.token_hex(6)  # this dispatcher's name on its leases
        self._pool: Any = None
        self._known: SubscriptionIndex | None = None  # the list whose secrets the log redactor was given

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.http.close()
        try:
            self.store.release_notifications(self.owner)
        except PipelineJobsError as exc:  # the lease runs out by itself
            log.info("notification lease not released (%s)", exc.kind.value)

    def _subscriptions(self) -> SubscriptionIndex:
        index = subscriptions(self.store, self.settings)
        if index is not self._known:  # a reread list: its secrets are masked in whatever is logged
            add_secrets(secret for sub in index.by_id.values() for secret in registry.secrets_of(sub))
            self._known = index
        return index

    def run_pass(self) -> DrainReport:
        """One batch: whatever is due now, up to ``batch`` items."""
        from ..store.outbox import EventFate, Settled

        report = DrainReport()
        now = self.clock()
        owner = self.owner
        until = now + timedelta(seconds=self.plan.lease_seconds)
        items = self.store.claim_notifications(now, until=until, owner=owner, limit=self.plan.batch)
        if not items:
            return report
        fates = self.store.event_fates(items, now=now, grace_seconds=self.plan.grace_seconds)
        index = self._subscriptions()
        jobs: list[tuple[OutboxItem, str | None]] = []
        settled: list[Settled] = []
        deliveries: list[Document] = []
        for item, (fate, pipeline_uuid) in zip(items, fates, strict=True):
            if fate is EventFate.PENDING:
                report.waiting += 1
                later = now + timedelta(seconds=RECHECK_SECONDS)  # its writer is most likely a few ms from done
                settled.append(Settled(item, item.pending, item.attempts, later))
            elif fate is EventFate.GONE:
                report.dropped += 1
                log.info("job %s: event %s was not applied or is gone; nobody is told of it", item.uuid, item.seq)
                settled.append(Settled(item, (), item.attempts, now))
            else:
                jobs.append((item, pipeline_uuid))
        facts = StoreFacts(self.store)
        for item, outcome in zip([i for i, _ in jobs], self._deliver_all(jobs, index, facts), strict=True):
            still, rows = outcome
            deliveries += rows
            attempts = item.attempts + 1
            pending = tuple(still)
            for name, said in (("delivered", "delivered"), ("refused", "refused"), ("skipped", "skipped")):
                setattr(report, name, getattr(report, name) + sum(1 for row in rows if row["outcome"] == said))
            report.dropped += sum(1 for row in rows if row["outcome"] == "dropped")
            report.gave_up += sum(1 for row in rows if row["outcome"] == "gave_up")
            if pending and attempts >= self.plan.max_attempts:
                report.gave_up += len(pending)
                for row in rows:
                    if row["subscription"] in pending and row["outcome"] == "failed":
                        row["outcome"] = "gave_up"
                log.warning(
                    "job %s: gave up telling %d subscriber(s) of event %s after %d attempts",
                    item.uuid,
                    len(pending),
                    item.seq,
                    attempts,
                )
                pending = ()
            report.retrying += len(pending)
            due = now + timedelta(seconds=backoff(attempts, self.plan))
            settled.append(Settled(item, pending, attempts, due))
        self.store.settle_notifications(owner, settled, deliveries)
        return report

    def _deliver_all(
        self, jobs: list[tuple[OutboxItem, str | None]], index: SubscriptionIndex, facts: StoreFacts
    ) -> list[tuple[list[str], list[Document]]]:
        """Deliver a batch; a receiver that did not answer (refused, timed out) is not tried again in it,
        so a dead or black-holed receiver costs a pass one timeout, not one per notification."""
        unreachable: set[str] = set()
        if len(jobs) <= 1 or self.plan.workers <= 1:
            return [self._deliver_item(item, pipeline, index, facts, unreachable) for item, pipeline in jobs]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.plan.workers, thread_name_prefix="pipelinejobs-notify")
        return list(self._pool.map(lambda job: self._deliver_item(job[0], job[1], index, facts, unreachable), jobs))

    def _deliver_item(
        self,
        item: OutboxItem,
        pipeline_uuid: str | None,
        index: SubscriptionIndex,
        facts: StoreFacts,
        unreachable: set[str],
    ) -> tuple[list[str], list[Document]]:
        """Try each pending subscription of one item once; (still pending, delivery records)."""
        assert item.record is not None
        still: list[str] = []
        rows: list[Document] = []
        for sub_id in item.pending:
            sub = index.by_id.get(sub_id)
            msg_id = message_id(item.record, sub_id)

            def row(
                outcome: str,
                tried: Attempt | None,
                at: datetime,
                note: str | None = None,
                *,
                sub_id: str = sub_id,
                msg_id: str = msg_id,
            ) -> Document:
                return delivery_record(
                    subscription=index.by_id.get(sub_id),
                    subscription_id=sub_id,
                    record=item.record,
                    msg_id=msg_id,
                    attempt=item.attempts + 1,
                    outcome=outcome,
                    tried=tried,
                    at=at,
                    plan=self.plan,
                    note=note,
                )

            if sub is None:  # removed since the event: nobody to tell
                rows.append(row("dropped", None, self.clock(), "the subscription was removed"))
                continue
            at = self.clock()
            if sub_id in unreachable:
                tried = Attempt(Outcome.RETRY, None, "not sent: the receiver did not answer earlier in this pass")
            else:
                tried = registry.deliver(Delivery(sub, item.record, pipeline_uuid, msg_id, facts), self.http)
                if tried.outcome is Outcome.RETRY and tried.status is None:
                    unreachable.add(sub_id)
            rows.append(row(tried.outcome.value, tried, at))
            if tried.outcome is Outcome.REFUSED:  # the policy is the process's: it says the same until a restart
                log.warning("notification %s (job %s) not sent: %s", msg_id, item.uuid, tried.error)
            elif tried.outcome is Outcome.GIVE_UP:
                log.warning("notification %s (job %s) given up: %s", msg_id, item.uuid, tried.error)
            elif tried.outcome is Outcome.RETRY:
                still.append(sub_id)
                log.info(
                    "notification %s (job %s) attempt %d failed: %s", msg_id, item.uuid, item.attempts + 1, tried.error
                )
        return still, rows

    def drain(self, *, max_passes: int = 1000) -> DrainReport:
        """Passes until nothing is due (what `pipelinejobs notify --drain` runs)."""
        total = DrainReport()
        for _ in range(max_passes):
            report = self.run_pass()
            total.add(report)
            handled = sum(report.__dict__.values())
            if handled < self.plan.batch:
                break
        self.store.expire_deliveries(self.clock())
        return total


def send_test(
    store: JobStore,
    settings: Settings,
    subscription: Document,
    *,
    now: datetime,
    policy: egress.Policy | None = None,
) -> Document:
    """Send a sample notification to a subscription now, record it, and say how it went.

    ``outcome`` is "delivered", "refused by policy" or "failed". A refused destination is answered
    before any connection is tried, in the same words whatever listens there: the test is no port
    scanner of the networks the policy keeps notifications out of.
    """
    import secrets

    from .. import egress

    plan = budget(settings)
    sample = EventRecord(
        uuid="00000000-0000-0000-0000-000000000000",
        seq=0,
        event_uuid="test-" + secrets.token_hex(8),
        name="test",
        date=now.replace(microsecond=0),
        data={"test": True},
        state="RUNNING",
    )
    msg_id = "msg_test_" + secrets.token_hex(12)
    http = Clients.from_settings(settings, policy)
    try:
        delivery = Delivery(subscription, sample, subscription.get("pipeline_uuid"), msg_id, NoFacts(), test=True)
        tried = registry.deliver(delivery, http)
    finally:
        http.close()
    row = delivery_record(
        subscription=subscription,
        subscription_id=str(subscription["id"]),
        record=None,
        msg_id=msg_id,
        attempt=1,
        outcome="test",
        tried=tried,
        at=now,
        plan=plan,
    )
    row["job_uuid"] = subscription.get("job_uuid")
    store.settle_notifications("test", [], [row])
    outcome = "delivered" if tried.ok else egress.REFUSED if tried.refused else "failed"
    return {"ok": tried.ok, "outcome": outcome, "webhook_id": msg_id, "status": tried.status, "error": tried.error}


def start_background(store: JobStore, settings: Settings, clock: Callable[[], datetime]) -> Callable[[], None] | None:
    """serve's dispatcher: a daemon thread running passes every ``every_seconds``, and at once when
    this process commits an outbox item. None (no thread) when ``every_seconds`` is 0.

    Returns the function that stops it (waiting for a pass in progress).
    """
    plan = budget(settings)
    if plan.every_seconds <= 0:
        return None
    dispatcher = Dispatcher(store, settings, clock)
    subscriptions(store, settings, fresh=True)
    first = wake_event(store)
    assert first is not None  # the read above made the store's cache
    stopping = threading.Event()

    expired_at = [0.0]

    def woken() -> threading.Event:
        return wake_event(store) or first

    def loop() -> None:
        took = 0.0  # the last pass's duration
        while not stopping.is_set():
            pause = plan.every_seconds
            began = time.monotonic()
            try:
                if time.monotonic() - expired_at[0] > EXPIRE_EVERY_SECONDS:  # SQLite has no TTL index
                    expired_at[0] = time.monotonic()
                    dispatcher.store.expire_deliveries(clock())
                report = dispatcher.run_pass()
                busy = sum(report.__dict__.values()) >= plan.batch
                if report.waiting:
                    pause = min(pause, RECHECK_SECONDS)
            except PipelineJobsError as exc:
                log.warning("notification pass failed (%s): %s", exc.kind.value, exc.message)
                busy = False
            except Exception as exc:  # a bug must not stop the deliveries for good
                log.error("notification pass failed (%s)", type(exc).__name__, exc_info=exc)
                busy = False
            took = time.monotonic() - began
            if busy:
                continue
            event = woken()
            event.wait(pause)
            event.clear()
            # let a burst gather into a batch: under load, bigger batches cost less per notification (the
            # batch's reads are shared), and the dispatcher leaves two thirds of its time to the events
            gather = min(max(GATHER_SECONDS, GATHER_PER_PASS * took), MAX_GATHER_SECONDS, plan.every_seconds)
            stopping.wait(gather)

    thread = threading.Thread(target=loop, name="pipelinejobs-notify", daemon=True)
    thread.start()
    log.info("notification dispatcher started: a pass every %s s and after each notified event", plan.every_seconds)

    def stop() -> None:
        stopping.set()
        woken().set()
        thread.join(timeout=30)
        dispatcher.close()

    return stop
