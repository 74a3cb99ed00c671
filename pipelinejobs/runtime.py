"""Running one message the way Abaco does: environment in, one JSON line and an exit code out."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from . import logs
from .errors import ErrorKind, PipelineJobsError
from .intake import from_env
from .messages import classify
from .settings import Settings, collect_secrets, load_settings
from .store.base import JobStore

log = logs.get_logger("runtime")


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


def handle_env(
    env: Mapping[str, str],
    *,
    settings: Settings,
    get_store: Callable[[], JobStore],
    now: datetime,
    parsed: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """One message from an Abaco-style environment: intake, classify, handle. Never raises.

    Shared by ``reactor.py`` (one process per message) and ``pipelinejobs serve`` (in-process).
    The store is asked for only once the message is valid, so bad input never touches storage.
    ``parsed``: serve's already parsed JSON object whose repr is MSG (``intake.from_env``).
    """
    from . import service

    received = ""  # what the message was, once it is known: named by the line that reports a failure
    try:
        intake = from_env(env, settings.limit("max_message_bytes", 1048576), parsed=parsed)
        message = classify(intake, settings.limit("max_data_bytes", 262144))
        subject = getattr(message, "uuid", None) or getattr(message, "pipeline_uuid", None)
        received = f" {type(message).__name__} for {subject}"
        # DEBUG: a handled message's one INFO line is the service's outcome line (a line costs ~5% of serve's CPU)
        log.debug("received%s", received)
        outcome = service.handle(message, store=get_store(), settings=settings, now=now, origin=intake.origin)
        return 0, outcome
    except PipelineJobsError as exc:
        log.warning("rejected%s (%s): %s", received, exc.kind.value, exc.message)
        return 1, exc.to_dict()
    except Exception:  # a bug: keep the (redacted) traceback in the log, not in the answer
        log.exception("internal error handling%s", received or " a message")
        return 1, PipelineJobsError(ErrorKind.INTERNAL, "internal error; the logs have the details").to_dict()


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
