"""The only business path: a classified message in, an outcome out.

intake -> classify/validate -> **authorize -> state machine -> store -> outcome**.
Front ends (reactor.py, the HTTP endpoint, the CLI) translate around this and
pass in the store, the settings and the clock.
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from typing import Any

from . import adapters, auth, deadlines, documents, fsm, identifiers
from .errors import ErrorKind, PipelineJobsError
from .intake import Origin
from .logs import add_secrets, get_logger
from .message_types import CreateMessage, DeleteMessage, EventMessage, Message, ReportMessage
from .notify import matching, wake
from .settings import Settings
from .store.base import JobStore
from .store.records import Append, AppendResult, Document, EventRecord
from .store.records import Outcome as RecordOutcome

log = get_logger("service")

#: Rounds of read -> append before giving up. An append misses only when another event
#: took the revision it was judged against; each round one racing writer wins, so this
#: bounds how many writers may race on one job before one of them is told to retry.
MAX_ATTEMPTS = 64

Outcome = dict[str, Any]


def handle(
    message: Message,
    *,
    store: JobStore,
    settings: Settings,
    now: datetime,
    origin: Origin | None = None,
    operator: bool = False,
) -> Outcome:
    """Apply one message and describe what happened (raises PipelineJobsError on rejection).

    ``operator``: the caller holds more than a message's credentials (serve's API token, the
    catalog database itself), so a create that finds its job may be answered with the job's token,
    and an engine's report needs no job token.
    Called by ``runtime.handle_intake`` only: every front end comes in through it.
    """
    token = getattr(message, "token", None)
    if token:
        add_secrets([token])
    if isinstance(message, EventMessage) and fsm.is_signal(message.name):
        return apply_heartbeat(message, store=store, settings=settings, now=now)
    if isinstance(message, EventMessage):
        return apply_event(message, store=store, settings=settings, now=now)
    if isinstance(message, ReportMessage):
        return apply_report(message, store=store, settings=settings, now=now, operator=operator)
    if isinstance(message, DeleteMessage):
        return delete_job(message, store=store, settings=settings, now=now)
    return create_job(message, store=store, settings=settings, now=now, origin=origin or Origin(), operator=operator)


def _back_off(attempt: int) -> None:
    """A short random pause after a lost race, so racing writers spread out instead of colliding again."""
    time.sleep(random.uniform(0, min(0.002 * (attempt + 1), 0.05)))


def _load_head(store: JobStore, uuid: str) -> Document:
    head = store.find_head(uuid)
    if head is None:
        raise PipelineJobsError(
            ErrorKind.NOT_FOUND, f"no job with uuid {uuid} in the {store.describe()}", uuid=uuid, store=store.backend
        )
    return head


def _require_visible(job: Document) -> None:
    if job.get("_visible") is False:
        raise PipelineJobsError(
            ErrorKind.NOT_FOUND, f"job {job['uuid']} was deleted (hidden); it accepts no events", uuid=job["uuid"]
        )


def _event_outcome(record: EventRecord, *, replayed: bool = False) -> Outcome:
    """The answer to an event: the same for its first delivery and for every retry of it."""
    outcome: Outcome = {
        "status": "ok",
        "action": "event",
        "event": record.name,
        "uuid": record.uuid,
        "state": record.state,
        "event_uuid": record.event_uuid,
        "revision": record.seq,
        "applied": record.outcome is RecordOutcome.APPLIED,
    }
    if record.outcome is RecordOutcome.STALE:
        outcome["stale"] = True
    if replayed:
        outcome["replayed"] = True
    return outcome


def _replay(message: EventMessage | ReportMessage, existing: EventRecord, digest: str) -> Outcome:
    """Answer a repeated delivery from its record, or refuse an id reused for another message."""
    if existing.digest is not None and existing.digest != digest:
        raise PipelineJobsError(
            ErrorKind.CONFLICT,
            f"event_id was already used on job {message.uuid} for a different event; nothing was changed",
            uuid=message.uuid,
            event_uuid=existing.event_uuid,
        )
    log.info("job %s: delivery repeated; answered from event %s", message.uuid, existing.event_uuid)
    return _event_outcome(existing, replayed=True)


def apply_event(
    message: EventMessage,
    *,
    store: JobStore,
    settings: Settings,
    now: datetime,
    operator: bool = False,
    digest: str | None = None,
) -> Outcome:
    """Log and apply one event: read the job's head, decide, append (3 round trips on MongoDB).

    ``operator`` and ``digest`` are an engine report's (``apply_report``): serve's API token stands
    for the job token, and a repeat of the report is recognised by the report's own digest.
    """
    precise = now
    now = documents.utc_seconds(now)
    name = message.name
    if name not in fsm.MESSAGE_EVENTS:
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, f"'{name}' is not an event a message may carry")
    event_id = getattr(message, "event_id", None)
    digest = digest or documents.payload_digest(name, message.data)
    event_uuid = identifiers.random_uuid("pipelinejob_event")
    for attempt in range(MAX_ATTEMPTS):
        head = _load_head(store, message.uuid)
        admin_only = name in fsm.ADMIN_EVENTS
        grant = auth.authorize(head, message.token, settings, now, admin_only=admin_only, operator=operator)
        _require_visible(head)
        state, revision = str(head.get("state", "")), documents.revision(head)
        status = getattr(message, "status", None)
        stale = fsm.is_stale(state, name, scheduler=adapters.is_scheduler(message.via), status=status)
        if stale or not fsm.allows(state, name):
            if event_id is not None:
                existing = store.find_delivery(message.uuid, event_id)
                if existing is not None:
                    return _replay(message, existing, digest)
            if stale:
                return _record_stale(message, store, state, revision, event_uuid, precise, digest)
            allowed = fsm.allowed_events(state)
            raise PipelineJobsError(
                ErrorKind.INVALID_TRANSITION,
                f"job {message.uuid} is {state}; '{name}' is not allowed in that state"
                f" (allowed: {', '.join(allowed) or 'none'})",
                uuid=message.uuid,
                state=state,
                event=name,
                allowed=allowed,
            )
        target = fsm.target_state(name, fsm.State(state)).value
        record = EventRecord(
            uuid=message.uuid,
            seq=revision + 1,
            event_uuid=event_uuid,
            name=name,
            date=now,
            data=message.data,
            state=target,
            via=message.via,
            event_id=event_id,
            digest=digest,
            notify=matching.matching(store, settings, head, name, target),  # the outbox, written with the record
        )
        source = (head.get("_properties") or {}).get("source")
        result = _append(store, record, revision, state, grant, source, head.get("pipeline_uuid"))
        if result.status is Append.APPLIED:
            return _event_outcome(record)
        if result.status is Append.REPLAYED and result.existing is not None:
            return _replay(message, result.existing, digest)
        log.debug("job %s changed while applying '%s'; reading it again", message.uuid, name)
        _back_off(attempt)
    raise PipelineJobsError(ErrorKind.CONFLICT, f"job {message.uuid} kept changing; '{name}' was not applied, retry")


def _append(
    store: JobStore,
    record: EventRecord,
    revision: int,
    state: str,
    grant: auth.Grant,
    job_source: str | None = None,
    pipeline_uuid: str | None = None,
) -> AppendResult:
    """The one append step of every event that changes a job (a message's, the watchdog's ``fail``):
    log and apply it at ``revision``; once applied, say so, move the job's watch record and its count
    (``/metrics``) on a state change and wake the notification dispatcher when the outbox got an item."""
    result = store.append_event(record, expected_revision=revision, job_source=job_source)
    if result.status is not Append.APPLIED:
        return result
    log.info(
        "job %s: %s -> %s by '%s' (%s, via %s)", record.uuid, state, record.state, record.name, grant.value, record.via
    )
    if record.state != state:
        store.count_move(pipeline_uuid, state, record.state)  # job counts
        _note_transition(store, record)
    if record.notify:
        wake.wake(store)
    return result


def _note_transition(store: JobStore, record: EventRecord) -> None:
    """Record in the job's watch record that it entered ``record.state`` at the record's date.

    One write, no read: the record's ``effective`` deadlines (resolved when it was made) give the
    new ``due_at``, so a state change costs the event path a single extra command. Best effort: the
    event is already applied, so a failure here is logged, not raised; a watch record that missed a
    transition is put right by the next watchdog pass that judges it.
    """
    try:
        store.enter_state(
            record.uuid,
            state=record.state,
            revision=record.seq,
            now=record.date,
            deadlines=deadlines.entry_deadlines(record.state),
        )
    except PipelineJobsError as exc:
        log.warning(
            "job %s: its watch record was not updated (%s); the watchdog will correct it", record.uuid, exc.kind.value
        )


def _side_record(
    message: EventMessage | ReportMessage,
    state: str,
    revision: int,
    event_uuid: str,
    precise: datetime,
    digest: str,
    outcome: RecordOutcome,
) -> EventRecord:
    """A log record beside the job's revisions (a late callback, a task report): it keeps the job's state
    and revision, and sorts after the revision's own record, in time order."""
    return EventRecord(
        uuid=message.uuid,
        seq=revision,
        slot=f"{precise.timestamp():017.6f}~{event_uuid}",
        event_uuid=event_uuid,
        name=message.name,
        date=documents.utc_seconds(precise),
        data=message.data,
        state=state,
        outcome=outcome,
        via=message.via,
        event_id=message.event_id,
        digest=digest,
    )


def _record_stale(
    message: EventMessage,
    store: JobStore,
    state: str,
    revision: int,
    event_uuid: str,
    precise: datetime,
    digest: str,
) -> Outcome:
    """Log a scheduler callback the job is already past, and answer it without changing the job."""
    record = _side_record(message, state, revision, event_uuid, precise, digest, RecordOutcome.STALE)
    result = store.record_stale(record)
    if result.status is Append.REPLAYED and result.existing is not None:
        return _replay(message, result.existing, digest)
    log.info("job %s is %s: late %s callback '%s' logged, not applied", message.uuid, state, message.via, message.name)
    return _event_outcome(record)


# -- workflow engines' reports ---------------------------------------------------------
def apply_report(
    message: ReportMessage, *, store: JobStore, settings: Settings, now: datetime, operator: bool = False
) -> Outcome:
    """Keep a workflow engine's report in the job's log, and apply the event it stands for, if any.

    Same credentials as an event: the job's token, an admin token or, with ``operator``, serve's API
    token. The first report on a CREATED job makes it RUNNING (a success as the very first report is
    preceded by an implied ``run``). An effect that would leave the state as it is (a second
    ``started``, a success after the last step was counted) is kept as a task record instead of a
    second history entry; one the job is already past is logged as stale, since engines are
    scheduler sources. A report whose delivery id the job knows is answered from its record. The
    report's ``progress`` changes are made once it is logged.
    """
    precise = now
    digest = documents.payload_digest(message.name, message.data)
    head = _load_head(store, message.uuid)
    auth.authorize(head, message.token, settings, documents.utc_seconds(now), operator=operator)
    _require_visible(head)
    if message.event_id is not None:
        existing = store.find_delivery(message.uuid, message.event_id)
        if existing is not None:
            return {**_replay(message, existing, digest), "report": message.name}
    state, effect = str(head.get("state", "")), message.effect
    if state == fsm.State.CREATED.value:
        if effect is None:
            effect = "run"  # the engine's first word about the run: it is running
        elif not fsm.allows(state, effect):
            implied = {"report": message.name, "implied": True}  # e.g. a success as the very first report
            run = EventMessage(message.uuid, "run", message.token, implied, message.via)
            apply_event(run, store=store, settings=settings, now=now, operator=operator)
            state = fsm.State.RUNNING.value
    if effect is not None and fsm.allows(state, effect) and fsm.target_state(effect, fsm.State(state)).value == state:
        effect = None  # nothing would change: keep the report, not a second history entry
    summary = {**message.progress, "engine": message.via, "updated": documents.utc_seconds(now)}
    if effect is None:
        progress = summary if message.progress else {}
        outcome = _record_task(message, store, state, documents.revision(head), precise, digest, progress)
    else:
        data = _name_failed_tasks(store, message) if effect == "fail" else message.data
        event = EventMessage(message.uuid, effect, message.token, data, message.via, message.event_id)
        outcome = apply_event(event, store=store, settings=settings, now=now, operator=operator, digest=digest)
        if message.progress and not outcome.get("replayed"):
            store.set_progress(message.uuid, summary)
    return {**outcome, "report": message.name}


def _record_task(
    message: ReportMessage,
    store: JobStore,
    state: str,
    revision: int,
    precise: datetime,
    digest: str,
    progress: dict[str, Any],
) -> Outcome:
    """Log a report as a task record, with its ``progress`` changes in the same step: the job's state,
    revision and history window stay as they are."""
    event_uuid = identifiers.random_uuid("pipelinejob_event")
    record = _side_record(message, state, revision, event_uuid, precise, digest, RecordOutcome.TASK)
    result = store.record_task(record, progress)
    if result.status is Append.REPLAYED and result.existing is not None:
        return _replay(message, result.existing, digest)
    log.info("job %s is %s: %s report '%s' kept as a task record", message.uuid, state, message.via, message.name)
    return _event_outcome(record)


def _name_failed_tasks(store: JobStore, message: ReportMessage) -> dict[str, Any]:
    """A failing run's report, with ``failed``: the tasks that started and never finished (the job's
    ``progress.unfinished``, kept by the engine's reports), which are the ones that failed once the
    engine has given up."""
    job = store.find_job(message.uuid) or {}
    progress: dict[str, Any] = job["progress"] if isinstance(job.get("progress"), dict) else {}
    unfinished: dict[str, Any] = progress["unfinished"] if isinstance(progress.get("unfinished"), dict) else {}
    names = sorted({str(name) for name in unfinished.values()})
    return {**message.data, "failed": names} if names else message.data


def delete_job(message: DeleteMessage, *, store: JobStore, settings: Settings, now: datetime) -> Outcome:
    now = documents.utc_seconds(now)
    for _ in range(MAX_ATTEMPTS):
        head = _load_head(store, message.uuid)
        auth.authorize(head, message.token, settings, now)
        if message.force:
            job = store.find_job(message.uuid)
            if job is None:
                continue
            tombstone = documents.audit_record(message.uuid, "delete", {"deleted": job}, job.get("_admin") or {}, now)
            if store.remove_job(message.uuid, expected_revision=documents.revision(job), tombstone=tombstone):
                log.info("job %s removed; its tombstone is in 'updates' and its log set aside", message.uuid)
                return {
                    "status": "ok",
                    "action": "delete",
                    "force": True,
                    "uuid": message.uuid,
                    "state": job.get("state"),
                }
            continue
        if head.get("_visible") is False:  # a repeated hide is answered from what is stored
            return {
                "status": "ok",
                "action": "delete",
                "force": False,
                "uuid": message.uuid,
                "state": head.get("state"),
                "visible": False,
            }
        audit = documents.audit_record(message.uuid, "update", {"_visible": False}, head.get("_admin") or {}, now)
        hidden = store.hide_job(message.uuid, now=now, audit=audit)
        if hidden is not None:
            log.info("job %s hidden", message.uuid)
            return {
                "status": "ok",
                "action": "delete",
                "force": False,
                "uuid": message.uuid,
                "state": hidden.get("state"),
                "visible": False,
            }
    raise PipelineJobsError(ErrorKind.CONFLICT, f"job {message.uuid} kept changing; it was not deleted, retry")


def create_job(
    message: CreateMessage,
    *,
    store: JobStore,
    settings: Settings,
    now: datetime,
    origin: Origin,
    operator: bool = False,
) -> Outcome:
    """Create the job the message describes, or answer for the one that exists (never overwritten).

    The token is the job's only credential: it is answered when the job is created, and for a job that
    exists only to a caller who proves it may have it (the job's own token or an admin token in the
    message, or an ``operator`` caller). Otherwise anyone able to send a create (any EXECUTE nonce)
    could repeat a job's create, whose fields a READ nonce shows, and receive its token.
    """
    now = documents.utc_seconds(now)
    identity = settings.identity
    child_of = sorted(set(message.child_of))  # as ManagedPipelineJob does: parents in any order, one job
    uuid = identifiers.job_uuid(message.pipeline_uuid, child_of, message.data, identity.dns_domain)
    if store.find_pipeline(message.pipeline_uuid) is None and store.find_head(uuid) is None:
        raise PipelineJobsError(
            ErrorKind.NOT_FOUND,
            f"no pipeline with uuid {message.pipeline_uuid}; register the pipeline first",
            pipeline_uuid=message.pipeline_uuid,
        )
    job = documents.new_job(
        uuid=uuid,
        pipeline_uuid=message.pipeline_uuid,
        archive_path=message.archive_path,
        archive_system=message.archive_system,
        data=message.data,
        session=message.session,
        child_of=child_of,
        identity=identity,
        now=now,
        agent=origin.agent,
        task=origin.task,
    )
    entry = job["history"][0]  # the document's copy of the create entry keeps large data in the log only
    entry["data"] = documents.inline_data(entry["data"], settings.history_inline_data_bytes, 0)
    audit = documents.audit_record(uuid, "create", {"created": uuid}, job["_admin"], now)
    own = deadlines.check_deadlines(message.deadlines) if message.deadlines is not None else None
    stored, created = store.insert_job(job, audit)
    if created:
        record = deadlines.new_record(
            uuid=uuid,
            pipeline_uuid=message.pipeline_uuid,
            state=str(stored["state"]),
            revision=0,
            since=now,
            last_seen=now,
            own=own,
            settings=settings,
        )
        try:
            store.put_watch(record)
        except PipelineJobsError as exc:  # the job exists; only its deadlines are not watched
            log.warning("job %s: no watch record (%s); its deadlines are not watched", uuid, exc.kind.value)
    log.info("job %s %s for pipeline %s", uuid, "created" if created else "already exists", message.pipeline_uuid)
    outcome: Outcome = {
        "status": "ok",
        "action": "create",
        "created": created,
        "uuid": uuid,
        "state": stored["state"],
        "archive_path": stored.get("archive_path"),
    }
    if created or operator or _shows_its_token(stored, message.token, settings, now):
        token = identifiers.job_token(stored["_salt"], uuid, stored["_admin"])
        add_secrets([token])
        outcome["token"] = token
    else:
        outcome["note"] = (
            "the job exists; its token was given to the caller that created it and is answered only"
            " with that token (or an admin token) in the message"
        )
    return outcome


def _shows_its_token(job: Document, token: str | None, settings: Settings, now: datetime) -> bool:
    """Whether a create's ``token`` is the existing job's own token or an admin token."""
    if not token:
        return False
    try:
        return auth.authorize(job, token, settings, now) in (auth.Grant.JOB, auth.Grant.ADMIN)
    except PipelineJobsError:
        return False


# -- heartbeats and the watchdog ----------------------------------------------------
def _heartbeat_outcome(uuid: str, state: str, last_seen: datetime | None, *, logged: bool, recorded: bool) -> Outcome:
    outcome: Outcome = {
        "status": "ok",
        "action": "heartbeat",
        "event": "heartbeat",
        "uuid": uuid,
        "state": state,
        "recorded": recorded,
        "logged": logged,
    }
    if last_seen is not None:
        outcome["last_seen"] = last_seen.isoformat()
    return outcome


def apply_heartbeat(message: EventMessage, *, store: JobStore, settings: Settings, now: datetime) -> Outcome:
    """Record a sign of life: the job's watch record's ``last_seen``, no history entry, no revision.

    Same token rules as any event. A log record (outcome ``heartbeat``) is written at most once
    per ``deadlines.heartbeat_log_interval_seconds``, decided by a compare-and-set on the watch
    record's ``logged_at``, so a job beating every 10 s for a month costs a few hundred records.
    """
    precise = now
    now = documents.utc_seconds(now)
    head = store.find_head(message.uuid)
    if head is None:
        head = _load_head(store, message.uuid)  # raises NOT_FOUND
    auth.authorize(head, message.token, settings, now)
    _require_visible(head)
    state, revision = str(head.get("state", "")), documents.revision(head)
    if not fsm.accepts_heartbeat(state):
        if adapters.is_scheduler(message.via):  # a late scheduler heartbeat: answered, nothing recorded
            return _heartbeat_outcome(message.uuid, state, None, logged=False, recorded=False)
        raise PipelineJobsError(
            ErrorKind.INVALID_TRANSITION,
            f"job {message.uuid} is {state}; a heartbeat is only accepted while it is at work"
            f" ({', '.join(sorted(s.value for s in fsm.HEARTBEAT_STATES))})",
            uuid=message.uuid,
            state=state,
            event=message.name,
        )
    interval = deadlines.heartbeat_log_interval(settings)
    record = store.watch_record(message.uuid)
    logged = False
    if record is None or record.get("state") != state:
        # not watched yet (an older job) or a transition the record missed: start it from what is known
        updated: datetime = head["updated"] if isinstance(head.get("updated"), datetime) else now
        fresh = deadlines.new_record(
            uuid=message.uuid,
            pipeline_uuid=head.get("pipeline_uuid"),
            state=state,
            revision=revision,
            since=min(updated, now),
            last_seen=now,
            own=(record or {}).get("deadlines"),
            settings=settings,
            logged_at=now,
        )
        logged = store.put_watch(fresh)
        last_seen: datetime = now
    else:
        previous = record.get("last_seen")
        last_seen = max(previous, now) if isinstance(previous, datetime) else now
        limits = deadlines.effective_deadlines(settings, record.get("pipeline_uuid"), record.get("deadlines"))
        since: datetime = record["since"] if isinstance(record.get("since"), datetime) else now
        changes: dict[str, Any] = {"last_seen": last_seen, "due_at": deadlines.due_at(state, since, last_seen, limits)}
        logged_at = record.get("logged_at")
        watch_revision = int(record.get("revision") or 0)
        if not isinstance(logged_at, datetime) or (now - logged_at).total_seconds() >= interval:
            logged = store.touch_watch(
                message.uuid, revision=watch_revision, changes={**changes, "logged_at": now}, logged_at=logged_at
            )
        if not logged:
            store.touch_watch(message.uuid, revision=watch_revision, changes=changes)
    if logged:
        event_uuid = identifiers.random_uuid("pipelinejob_event")
        store.record_stale(
            EventRecord(
                uuid=message.uuid,
                seq=revision,
                slot=f"{precise.timestamp():017.6f}~{event_uuid}",
                event_uuid=event_uuid,
                name=message.name,
                date=now,
                data=message.data,
                state=state,
                outcome=RecordOutcome.HEARTBEAT,
                via=message.via,
            )
        )
        log.info("job %s: heartbeat (logged at most every %d s, via %s)", message.uuid, interval, message.via)
    return _heartbeat_outcome(message.uuid, state, last_seen, logged=logged, recorded=True)


def fail_overdue(
    store: JobStore,
    settings: Settings,
    *,
    uuid: str,
    state: str,
    expected_revision: int,
    data: dict[str, Any],
    now: datetime,
    pipeline_uuid: str | None = None,
) -> Outcome:
    """The watchdog's ``fail``: one compare-and-set at the revision the job was judged at.

    The watchdog is trusted code in this process (``Grant.SYSTEM``), so no token is made or
    checked; no front end can reach this function. If anything changed the job after it
    was judged (a real event, another watchdog), the append misses and CONFLICT is raised:
    that event wins and the job is not failed, let alone twice.
    """
    now = documents.utc_seconds(now)
    if not fsm.allows(state, "fail"):
        raise PipelineJobsError(ErrorKind.INVALID_TRANSITION, f"job {uuid} is {state}; it cannot fail", uuid=uuid)
    # which subscriptions hear of it needs the job's pipeline: read only when there are subscriptions
    head = (store.find_head(uuid) if matching.subscriptions(store, settings).by_id else None) or {"uuid": uuid}
    record = EventRecord(
        uuid=uuid,
        seq=expected_revision + 1,
        event_uuid=identifiers.random_uuid("pipelinejob_event"),
        name="fail",
        date=now,
        data=data,
        state=fsm.State.FAILED.value,
        via="watchdog",
        digest=documents.payload_digest("fail", data),
        notify=matching.matching(store, settings, head, "fail", fsm.State.FAILED.value),
    )
    pipeline = pipeline_uuid or head.get("pipeline_uuid")
    result = _append(store, record, expected_revision, state, auth.Grant.SYSTEM, pipeline_uuid=pipeline)
    if result.status is not Append.APPLIED:
        raise PipelineJobsError(ErrorKind.CONFLICT, f"job {uuid} changed after it was judged; not failed", uuid=uuid)
    return _event_outcome(record)
