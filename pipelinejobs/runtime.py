"""Running one message the way Abaco does: environment in, one JSON line and an exit code out."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from . import logs
from .errors import ErrorKind, PipelineJobsError
from .intake import Intake, Origin, from_body, from_env
from .messages import classify
from .settings import Settings, collect_secrets, load_settings
from .store.base import JobStore

log = logs.get_logger("runtime")

DEFAULT_MAX_MESSAGE_BYTES = 1048576
DEFAULT_MAX_DATA_BYTES = 262144
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def open_store(settings: Settings, env: Mapping[str, str] | None = None) -> JobStore:
    """The configured job store (see :mod:`pipelinejobs.store.factory`); the caller closes it."""
    from .store.factory import open_job_store

    return open_job_store(settings, env)


def json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, default=json_default, sort_keys=False)


def handle_intake(
    intake: Intake,
    *,
    settings: Settings,
    get_store: Callable[[], JobStore],
    now: datetime,
    operator: bool = False,
) -> dict[str, Any]:
    """The one way in for every message, whatever brought it (reactor.py, serve, the CLI, the client).

    Classify it within the configured limits, then hand it to ``service.handle``; raises
    ``PipelineJobsError`` on a refusal. The store is asked for only once the message is valid, so
    bad input never touches storage. ``operator``: the caller holds more than a message's
    credentials (serve's API token, the catalog database itself; see ``service.create_job``).
    """
    from . import service

    message = classify(intake, settings.limit("max_data_bytes", DEFAULT_MAX_DATA_BYTES))
    subject = getattr(message, "uuid", None) or getattr(message, "pipeline_uuid", None)
    log.debug("received %s for %s", type(message).__name__, subject)  # the outcome line is the INFO one
    return service.handle(
        message, store=get_store(), settings=settings, now=now, origin=intake.origin, operator=operator
    )


def handle_body(
    body: Any,
    *,
    settings: Settings,
    store: JobStore,
    now: datetime,
    operator: bool = False,
    origin: Origin | None = None,
) -> dict[str, Any]:
    """A message given as a JSON value (the CLI, the client's database transport): the same limits,
    classification and outcome as one received over HTTP; raises ``PipelineJobsError`` on a refusal."""
    intake = from_body(body, settings.limit("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES), origin=origin)
    return handle_intake(intake, settings=settings, get_store=lambda: store, now=now, operator=operator)


def handle_env(
    env: Mapping[str, str],
    *,
    settings: Settings,
    get_store: Callable[[], JobStore],
    now: datetime,
    parsed: dict[str, Any] | None = None,
    operator: bool = False,
) -> tuple[int, dict[str, Any]]:
    """One message from an Abaco-style environment: (exit code, result object). Never raises.

    Shared by ``reactor.py`` (one process per message) and ``pipelinejobs serve`` (in-process).
    ``parsed``: serve's already parsed JSON object whose repr is MSG (``intake.from_env``).
    """
    try:
        intake = from_env(env, settings.limit("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES), parsed=parsed)
    except PipelineJobsError as exc:  # not read at all: the failure line cannot say what it was
        return 1, _rejected(exc, "")
    except Exception:  # a bug: keep the (redacted) traceback in the log, not in the answer
        return 1, _failed("")
    return handle_received(intake, settings=settings, get_store=get_store, now=now, operator=operator)


def handle_received(
    intake: Intake,
    *,
    settings: Settings,
    get_store: Callable[[], JobStore],
    now: datetime,
    operator: bool = False,
) -> tuple[int, dict[str, Any]]:
    """A message already read (serve's engine routes, ``server/engines.py``; ``handle_env`` once it read the
    environment): (exit code, result object). Never raises; a failure's log line names the message."""
    try:
        return 0, handle_intake(intake, settings=settings, get_store=get_store, now=now, operator=operator)
    except PipelineJobsError as exc:
        return 1, _rejected(exc, _describe(intake))
    except Exception:  # a bug: keep the (redacted) traceback in the log, not in the answer
        return 1, _failed(_describe(intake))


def _rejected(exc: PipelineJobsError, received: str) -> dict[str, Any]:
    log.warning("rejected%s (%s): %s", received, exc.kind.value, exc.message)
    return exc.to_dict()


def _failed(received: str) -> dict[str, Any]:
    log.exception("internal error handling%s", received or " a message")
    return PipelineJobsError(ErrorKind.INTERNAL, "internal error; the logs have the details").to_dict()


def _describe(intake: Intake) -> str:
    """What a message claims to be about, for the line that reports its refusal: a job or pipeline uuid,
    only when it has a uuid's shape (the value is the sender's, and may be anything)."""
    body = intake.body if isinstance(intake.body, dict) else {}
    for subject in (body.get("uuid"), body.get("pipeline_uuid"), intake.params.get("uuid"), body.get("runId")):
        if isinstance(subject, str) and _UUID.fullmatch(subject):
            return f" a message for {subject}"
    return " a message"


def run_message(
    env: Mapping[str, str],
    *,
    config_path: Path | None = None,
    now: datetime | None = None,
) -> tuple[int, dict[str, Any]]:
    """Handle the message described by ``env`` as reactor.py does; returns (exit code, result object)."""
    formatter = logs.configure(secrets=collect_secrets(env, {}))
    opened: list[JobStore] = []

    def get_store() -> JobStore:
        opened.append(open_store(settings, env))
        return opened[-1]

    try:
        settings = load_settings(env, config_path)
        formatter.add_secrets(settings.secrets)
        logs.set_level(settings.section("logs").get("level"))
        return handle_env(env, settings=settings, get_store=get_store, now=now or datetime.now(timezone.utc))
    except PipelineJobsError as exc:  # settings could not be read
        log.warning("rejected (%s): %s", exc.kind.value, exc.message)
        return 1, exc.to_dict()
    finally:
        for store in opened:
            store.close()
