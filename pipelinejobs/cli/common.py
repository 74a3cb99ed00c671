"""What every `pipelinejobs` command shares: settings, the store, output, JSON input, exit codes.

A front end like reactor.py: a command reads its settings from config.yml and the process
environment, sends anything that changes a job through the one way in (``runtime.handle_body``),
prints for people (or ``--json`` for scripts) and maps every error kind to an exit code through
one table (:data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import logs
from ..errors import ErrorKind, PipelineJobsError
from ..runtime import dumps
from ..settings import Settings, load_settings
from ..store.base import JobStore

USAGE_ERROR = 2
#: One table from error kind to exit code (2 is argparse's usage error).
EXIT_CODES: dict[ErrorKind, int] = {
    ErrorKind.BAD_MESSAGE: 3,
    ErrorKind.UNAUTHORIZED: 4,
    ErrorKind.NOT_FOUND: 5,
    ErrorKind.INVALID_TRANSITION: 6,
    ErrorKind.CONFLICT: 7,
    ErrorKind.STORAGE_UNAVAILABLE: 8,
    ErrorKind.REMOTE_UNAVAILABLE: 11,
    ErrorKind.CONFIGURATION: 9,
    ErrorKind.INTERNAL: 10,
}
API_TOKENS_ENV = "PIPELINEJOBS_API_TOKENS"  # comma-separated tokens `serve` accepts (kept out of `ps`)
BEARER_ENV = "PIPELINEJOBS_API_TOKEN"  # the bearer token `send` uses unless --bearer is given
BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a writer whose reader went away (`... | head`)
#: how long a store may be silent before the CLI says it is waiting for it
WAIT_NOTICE_SECONDS = 1.0

log = logs.get_logger("cli")


def settings_of(args: argparse.Namespace) -> Settings:
    settings = load_settings(os.environ, Path(args.config) if args.config else None)
    logs.add_secrets(settings.secrets)
    return settings


wait_notices: list[threading.Timer] = []


def open_store(settings: Settings) -> JobStore:
    """The configured store, named in ``-v`` output; a MongoDB that does not answer is reported once."""
    from ..store.factory import open_job_store

    store = open_job_store(settings)
    log.info("store: %s", store.describe())
    if not store.local:
        timer = threading.Timer(WAIT_NOTICE_SECONDS, report_wait, (store, settings.mongodb_timeout_ms))
        timer.daemon = True
        timer.start()
        wait_notices.append(timer)
    return store


def report_wait(store: JobStore, timeout_ms: int) -> None:
    """Say once that MongoDB has not answered yet, and for how long the CLI will wait for it."""
    if store.waiting_for_server():
        log.warning(
            "waiting up to %.1f s for %s (mongodb.server_selection_timeout_ms)...",
            timeout_ms / 1000,
            store.describe(),
        )


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    print(dumps(data) if args.json else human)


def read_json(text: str, what: str) -> Any:
    """JSON from the argument, from a file (``@path``) or from stdin (``-``)."""
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        text = read_file(Path(text[1:]), what)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PipelineJobsError(
            ErrorKind.BAD_MESSAGE, f"{what} is not valid JSON ({exc.msg}, line {exc.lineno})"
        ) from exc
    except RecursionError as exc:
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, f"{what} is nested too deeply to read") from exc
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:  # "\ud800": an escape JSON allows that names no character
        escape = f"\\u{ord(exc.object[exc.start]):04x}"
        raise PipelineJobsError(
            ErrorKind.BAD_MESSAGE, f"{what} holds a lone surrogate escape ({escape}), not text"
        ) from exc
    return value


def read_file(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, f"cannot read {what} {path}: {exc.strerror}") from exc


def when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value or "-")


def short(value: Any, width: int | None = 60) -> str:
    """``value`` as compact JSON, cut to ``width`` characters (None: whole)."""
    text = json.dumps(value, default=str, separators=(",", ":"))
    return text if width is None or len(text) <= width else text[: width - 3] + "..."


def handle(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    """A message built from the command line, through the one way in, exactly as one sent to the actor.

    The CLI's user holds the store itself (its file or its database credentials), so a create that
    finds its job is answered with the job's token (``operator``).
    """
    from ..runtime import handle_body

    settings = settings_of(args)
    with open_store(settings) as store:
        return handle_body(body, settings=settings, store=store, now=datetime.now(timezone.utc), operator=True)


def state_name(text: str | None) -> str | None:
    """A state name in any case, or a usage error listing the states."""
    from ..fsm import State

    if text is None:
        return None
    names = [state.value for state in State]
    if text.strip().upper() not in names:
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, f"--state {text!r} is not a state; states: {', '.join(names)}")
    return text.strip().upper()


def at_time(args: argparse.Namespace) -> datetime:
    """The clock of a pass: now, or ``--at`` (an ISO time) to see what a pass would do then."""
    if not args.at:
        return datetime.now(timezone.utc)
    try:
        moment = datetime.fromisoformat(args.at.replace("Z", "+00:00"))
    except ValueError as exc:
        raise PipelineJobsError(
            ErrorKind.BAD_MESSAGE, "--at must be an ISO 8601 time, e.g. 2026-11-28T12:00:00Z"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
