"""The only business path: a classified message in, an outcome out.

intake -> classify/validate -> **authorize -> state machine -> store -> outcome**.
Front ends (reactor.py, the HTTP endpoint, the CLI) translate around this and
pass in the store, the settings and the clock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from . import auth, documents, fsm, identifiers
from .errors import ErrorKind, PipelineJobsError
from .intake import Origin
from .logs import add_secrets, get_logger
from .messages import CreateMessage, DeleteMessage, EventMessage, Message
from .settings import Settings
from .store.base import Document, JobStore

log = get_logger("service")

#: Rounds of read -> conditional write before giving up. A conditional write only
#: misses when another message moved the job to a state that this event does not
#: accept, and the next read then explains the rejection, so a few rounds suffice.
MAX_ATTEMPTS = 5

Outcome = dict[str, Any]


def handle(
    message: Message, *, store: JobStore, settings: Settings, now: datetime, origin: Origin | None = None
) -> Outcome:
    """Apply one message and describe what happened (raises PipelineJobsError on rejection)."""
    token = getattr(message, "token", None)
    if token:
        add_secrets([token])
    if isinstance(message, EventMessage):
        return apply_event(message, store=store, settings=settings, now=now)
    if isinstance(message, DeleteMessage):
        return delete_job(message, store=store, settings=settings, now=now)
    return create_job(message, store=store, settings=settings, now=now, origin=origin or Origin())


def _load_job(store: JobStore, uuid: str) -> Document:
    job = store.find_job(uuid)
    if job is None:
        raise PipelineJobsError(ErrorKind.NOT_FOUND, f"no job with uuid {uuid}", uuid=uuid)
    return job


def _require_visible(job: Document) -> None:
    if job.get("_visible") is False:
        raise PipelineJobsError(
            ErrorKind.NOT_FOUND, f"job {job['uuid']} was deleted (hidden); it accepts no events", uuid=job["uuid"]
        )


def apply_event(message: EventMessage, *, store: JobStore, settings: Settings, now: datetime) -> Outcome:
    now = documents.utc_seconds(now)
    name = message.name
    if name not in fsm.MESSAGE_EVENTS:
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, f"'{name}' is not an event a message may carry")
    for _ in range(MAX_ATTEMPTS):
        job = _load_job(store, message.uuid)
        grant = auth.authorize(job, message.token, settings, now, admin_only=name in fsm.ADMIN_EVENTS)
        _require_visible(job)
        state = str(job.get("state", ""))
        if not fsm.allows(state, name):
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
        target = fsm.TRANSITIONS[name][1]
        entry = documents.history_entry(name, message.data, now)
        audit = documents.audit_record(
            message.uuid,
            "update",
            {"event": name, "event_uuid": entry["uuid"], "state": target.value if target else None, "via": message.via},
            job.get("_admin") or {},
            now,
        )
        from_states = None if name == "reset" else {s.value for s in fsm.source_states(name)}
        updated = store.apply_event(
            message.uuid,
            from_states=from_states,
            entry=entry,
            new_state=target.value if target else None,
            now=now,
            audit=audit,
        )
        if updated is not None:
            log.info(
                "job %s: %s -> %s by '%s' (%s, via %s)",
                message.uuid,
                state,
                updated["state"],
                name,
                grant.value,
                message.via,
            )
            return {
                "status": "ok",
                "action": "event",
                "event": name,
                "uuid": message.uuid,
                "state": updated["state"],
                "event_uuid": entry["uuid"],
                "revision": updated.get("_properties", {}).get("revision"),
            }
        log.info("job %s changed while applying '%s'; reading it again", message.uuid, name)
    raise PipelineJobsError(ErrorKind.CONFLICT, f"job {message.uuid} kept changing; '{name}' was not applied, retry")


def delete_job(message: DeleteMessage, *, store: JobStore, settings: Settings, now: datetime) -> Outcome:
    now = documents.utc_seconds(now)
    for _ in range(MAX_ATTEMPTS):
        job = _load_job(store, message.uuid)
        auth.authorize(job, message.token, settings, now)
        if message.force:
            tombstone = documents.audit_record(message.uuid, "delete", {"deleted": job}, job.get("_admin") or {}, now)
            revision = (job.get("_properties") or {}).get("revision")
            if store.remove_job(message.uuid, expected_revision=revision, tombstone=tombstone):
                log.info("job %s removed; its tombstone is in 'updates'", message.uuid)
                return {
                    "status": "ok",
                    "action": "delete",
                    "force": True,
                    "uuid": message.uuid,
                    "state": job.get("state"),
                }
            continue
        if job.get("_visible") is False:  # a repeated hide is answered from what is stored
            return {
                "status": "ok",
                "action": "delete",
                "force": False,
                "uuid": message.uuid,
                "state": job.get("state"),
                "visible": False,
            }
        audit = documents.audit_record(message.uuid, "update", {"_visible": False}, job.get("_admin") or {}, now)
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
    message: CreateMessage, *, store: JobStore, settings: Settings, now: datetime, origin: Origin
) -> Outcome:
    now = documents.utc_seconds(now)
    if store.find_pipeline(message.pipeline_uuid) is None:
        raise PipelineJobsError(
            ErrorKind.NOT_FOUND,
            f"no pipeline with uuid {message.pipeline_uuid}; register the pipeline first",
            pipeline_uuid=message.pipeline_uuid,
        )
    identity = settings.identity
    child_of = list(message.child_of)
    uuid = identifiers.job_uuid(message.pipeline_uuid, child_of, message.data, identity.dns_domain)
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
    audit = documents.audit_record(uuid, "create", {"created": uuid}, job["_admin"], now)
    stored, created = store.insert_job(job, audit)
    token = identifiers.job_token(stored["_salt"], uuid, stored["_admin"])
    add_secrets([token])
    log.info("job %s %s for pipeline %s", uuid, "created" if created else "already exists", message.pipeline_uuid)
    return {
        "status": "ok",
        "action": "create",
        "created": created,
        "uuid": uuid,
        "state": stored["state"],
        "token": token,
    }
