"""The `pipelinejobs` command: pipelines, jobs, nonces, sending messages and `serve`.

A front end like reactor.py: it reads its settings from config.yml and the
process environment, goes through ``service.handle`` for anything that changes
a job, prints for people (or ``--json`` for scripts) and maps every error kind
to an exit code through one table. Starlette, uvicorn and httpx are imported
only by the subcommands that need them, so ``pipelinejobs job show`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__, logs, notify_cli
from .errors import ErrorKind, PipelineJobsError
from .runtime import dumps
from .settings import Settings, load_settings

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


# -- shared plumbing ------------------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(os.environ, Path(args.config) if args.config else None)
    logs.add_secrets(settings.secrets)
    return settings


_watchdogs: list[threading.Timer] = []


def _open_store(settings: Settings) -> Any:
    """The configured store, named in ``-v`` output; a MongoDB that does not answer is reported once."""
    from .runtime import open_store

    store = open_store(settings)
    log.info("store: %s", store.describe())
    if store.backend == "mongodb":
        timer = threading.Timer(WAIT_NOTICE_SECONDS, _report_wait, (store, settings.mongodb_timeout_ms))
        timer.daemon = True
        timer.start()
        _watchdogs.append(timer)
    return store


def _report_wait(store: Any, timeout_ms: int) -> None:
    """Say once that MongoDB has not answered yet, and for how long the CLI will wait for it."""
    try:
        reachable = store.database.client.topology_description.has_writable_server()
    except Exception:
        return
    if not reachable:
        log.warning(
            "waiting up to %.1f s for %s (mongodb.server_selection_timeout_ms)...",
            timeout_ms / 1000,
            store.describe(),
        )


def _emit(args: argparse.Namespace, data: Any, human: str) -> None:
    print(dumps(data) if args.json else human)


def _read_json(text: str, what: str) -> Any:
    """JSON from the argument, from a file (``@path``) or from stdin (``-``)."""
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        text = _read_file(Path(text[1:]), what)
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


def _read_file(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, f"cannot read {what} {path}: {exc.strerror}") from exc


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value or "-")


def _short(value: Any, width: int | None = 60) -> str:
    """``value`` as compact JSON, cut to ``width`` characters (None: whole)."""
    text = json.dumps(value, default=str, separators=(",", ":"))
    return text if width is None or len(text) <= width else text[: width - 3] + "..."


# -- pipeline -------------------------------------------------------------------------------------
def cmd_pipeline_register(args: argparse.Namespace) -> int:
    from . import documents, identifiers

    doc = _read_json("@" + args.file, "the pipeline file")
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not isinstance(doc.get("components"), list):
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, "a pipeline file is a JSON object with 'id' and 'components'")
    if not all(isinstance(c, dict) for c in doc["components"]):
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, "every pipeline component must be a JSON object")
    settings = _settings(args)
    uuid = (
        args.uuid
        or doc.get("uuid")
        or identifiers.pipeline_uuid(doc["id"], doc["components"], settings.identity.dns_domain)
    )
    now = documents.utc_seconds(datetime.now(timezone.utc))
    pipeline = {
        "id": doc["id"],
        "uuid": uuid,
        "name": doc.get("name") or doc["id"],
        "description": doc.get("description") or "",
        "components": doc["components"],
        "_admin": documents.admin_block(settings.identity),
        "_properties": {"created_date": now, "modified_date": now, "revision": 0, "source": documents.RECORD_SOURCE},
    }
    with _open_store(settings) as store:
        stored, created = store.save_pipeline(pipeline)
    same = (
        stored.get("uuid") == uuid and stored.get("id") == doc["id"] and stored.get("components") == doc["components"]
    )
    if not created and not same:
        raise PipelineJobsError(
            ErrorKind.CONFLICT,
            f"pipeline {stored.get('id')} is already registered as {stored.get('uuid')} with other components "
            f"(see `pipelinejobs pipeline show {stored.get('uuid')}`); nothing was changed: "
            "give the new pipeline its own id (e.g. a new version) to register it",
        )
    verb = "registered" if created else "already registered:"
    _emit(args, {"created": created, "pipeline": stored}, f"{verb} pipeline {stored['id']} as {stored['uuid']}")
    return 0


def cmd_pipeline_list(args: argparse.Namespace) -> int:
    with _open_store(_settings(args)) as store:
        pipelines = store.list_pipelines()
    rows = [f"{'UUID':<36}  {'COMPONENTS':>10}  ID"]
    rows += [f"{p.get('uuid'):<36}  {len(p.get('components') or []):>10}  {p.get('id')}" for p in pipelines]
    _emit(args, pipelines, "\n".join(rows) if pipelines else "no pipelines registered")
    return 0


def cmd_pipeline_show(args: argparse.Namespace) -> int:
    """A pipeline by uuid, or by its id (e.g. tacc/tacobot:9000)."""
    with _open_store(_settings(args)) as store:
        found = store.find_pipeline(args.pipeline)
        if found is None:
            found = next((p for p in store.list_pipelines() if p.get("id") == args.pipeline), None)
        where = store.describe()
    if found is None:
        raise PipelineJobsError(ErrorKind.NOT_FOUND, f"no pipeline with uuid or id {args.pipeline} in the {where}")
    human = "\n".join(
        [
            f"pipeline {found.get('id')}  uuid {found.get('uuid')}",
            f"  name        {found.get('name')}",
            f"  description {found.get('description') or '-'}",
            "  components:",
            *(f"    {json.dumps(c, sort_keys=True, default=str)}" for c in found.get("components") or []),
        ]
    )
    _emit(args, found, human)
    return 0


# -- job ------------------------------------------------------------------------------------------
def cmd_job_create(args: argparse.Namespace) -> int:

    body: dict[str, Any] = {
        "pipeline_uuid": args.pipeline,
        "archive_path": args.archive_path,
        "data": _read_json(args.data, "--data"),
    }
    if args.session:
        body["session"] = args.session
    if args.archive_system:
        body["archive_system"] = args.archive_system
    if args.child_of:
        body["child_of"] = args.child_of
    outcome = _handle(args, body)
    verb = "created" if outcome["created"] else "found existing"
    human = (
        f"{verb} job {outcome['uuid']} (state {outcome['state']})\n"
        f"token: {outcome['token']}   <- every event for this job must carry it; keep it private"
    )
    _emit(args, outcome, human)
    return 0


def _handle(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    """A message built from the command line, classified and handled exactly as one sent to the actor."""
    from . import service
    from .intake import Intake, to_plain_json
    from .messages import classify

    settings = _settings(args)
    message = classify(
        Intake(body=to_plain_json(body), content_type="application/json"), settings.limit("max_data_bytes", 262144)
    )
    with _open_store(settings) as store:
        return service.handle(message, store=store, settings=settings, now=datetime.now(timezone.utc))


def cmd_job_event(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"uuid": args.uuid, "name": args.name, "token": args.token}
    if args.data is not None:
        body["data"] = _read_json(args.data, "--data")
    outcome = _handle(args, body)
    replay = " (a repeat: already applied)" if outcome.get("replayed") else ""
    stale = " (stale: recorded, state unchanged)" if outcome.get("stale") else ""
    _emit(args, outcome, f"job {outcome['uuid']}: {args.name} -> state {outcome.get('state')}{replay}{stale}")
    return 0


def cmd_job_delete(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"uuid": args.uuid, "action": "delete", "force": args.force, "token": args.token}
    outcome = _handle(args, body)
    human = (
        f"job {args.uuid} removed; its tombstone is in the audit trail (`pipelinejobs job audit {args.uuid}`)"
        if args.force
        else f"job {args.uuid} hidden (`job list --all` still shows it; --force removes it)"
    )
    _emit(args, outcome, human)
    return 0


def cmd_job_audit(args: argparse.Namespace) -> int:
    """The job's audit trail: its creation, hides and the tombstone of a removal, oldest first."""
    with _open_store(_settings(args)) as store:
        trail = store.audit_trail(args.uuid)
        where = store.describe()
    if not trail:
        raise PipelineJobsError(ErrorKind.NOT_FOUND, f"no audit records for job {args.uuid} in the {where}")
    rows = [f"{'DATE':<20}  {'ACTION':<8}  {'BY':<16}  CHANGE"]
    for record in trail:
        diff = record.get("diff") or {}
        change = "the whole job (tombstone)" if "deleted" in diff else _short(diff, None if args.full else 60)
        by = (record.get("_admin") or {}).get("owner") or "-"
        rows.append(f"{_when(record.get('date')):<20}  {record.get('action', '?'):<8}  {by:<16}  {change}")
    _emit(args, trail, "\n".join(rows))
    return 0


def job_text(job: dict[str, Any], *, full: bool = False, watch: dict[str, Any] | None = None) -> str:
    """A job for people; ``full`` shows data whole instead of cut to one line."""
    width = None if full else 60
    visible = "hidden (deleted)" if job.get("_visible") is False else "visible"
    lines = [
        f"job {job['uuid']}  state {job.get('state')}  ({visible})",
        f"  pipeline  {job.get('pipeline_uuid')}",
        f"  session   {job.get('session') or '-'}",
        f"  archive   {job.get('archive_system')}:{job.get('archive_path')}",
        f"  data      {_short(job.get('data'), width)}",
        f"  updated   {_when(job.get('updated'))}  revision {(job.get('_properties') or {}).get('revision')}",
    ]
    if job.get("child_of"):
        lines.insert(3, f"  child of  {', '.join(map(str, job['child_of']))}")
    if watch is not None:
        lines.append(watch_text(watch))
    history = job.get("history") or []
    lines.append(f"  history ({len(history)} events, oldest first):")
    for entry in history:
        data = f"  data {_short(entry.get('data'), None if full else 50)}" if entry.get("data") else ""
        lines.append(f"    {_when(entry.get('date'))}  {entry.get('name', '?'):<10}{data}".rstrip())
    return "\n".join(lines)


def cmd_job_show(args: argparse.Namespace) -> int:
    from .documents import public_view

    settings = _settings(args)
    with _open_store(settings) as store:
        job = store.find_job(args.uuid)
        watched = _watch_view(store, settings, job) if job is not None else None
        deliveries = notify_cli.job_deliveries(store, args.uuid) if job is not None else None
        where = store.describe()
    if job is None:
        raise PipelineJobsError(ErrorKind.NOT_FOUND, f"no job with uuid {args.uuid} in the {where}")
    shown = public_view(job) if watched is None else {**public_view(job), "watch": watched}
    text = job_text(job, full=args.full, watch=watched)
    if deliveries:  # notifications (issue 10): the latest delivery attempts
        shown["deliveries"] = deliveries
        text += f"\n  deliveries (latest {len(deliveries)}, newest first):\n"
        text += "\n".join("    " + line for line in notify_cli.deliveries_text(deliveries).splitlines())
    _emit(args, shown, text)
    return 0


def _state(text: str | None) -> str | None:
    """A state name in any case, or a usage error listing the states."""
    from .fsm import State

    if text is None:
        return None
    names = [state.value for state in State]
    if text.strip().upper() not in names:
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, f"--state {text!r} is not a state; states: {', '.join(names)}")
    return text.strip().upper()


def cmd_job_list(args: argparse.Namespace) -> int:
    from .documents import public_view

    state = _state(args.state)
    with _open_store(_settings(args)) as store:
        jobs = store.list_jobs(state=state, pipeline_uuid=args.pipeline, include_hidden=args.all, limit=args.limit)
    rows = [f"{'UUID':<36}  {'STATE':<10}  {'UPDATED':<20}  PIPELINE"]
    rows += [
        f"{j['uuid']:<36}  {j.get('state', ''):<10}  {_when(j.get('updated')):<20}  {j.get('pipeline_uuid')}"
        + ("  (hidden)" if j.get("_visible") is False else "")
        for j in jobs
    ]
    _emit(args, [public_view(j) for j in jobs], "\n".join(rows) if jobs else "no jobs match")
    return 0


def history_text(uuid: str, records: list[Any], next_cursor: str | None) -> str:
    if not records:
        return f"job {uuid}: no history"
    lines = [f"{'SEQ':>6}  {'DATE':<20}  {'EVENT':<10}  {'OUTCOME':<8}  {'STATE':<10}  DATA"]
    for record in records:
        seq = "-" if record.seq < 0 else str(record.seq)
        data = _short(record.data, 50) if record.data else ""
        outcome = record.outcome.value
        lines.append(f"{seq:>6}  {_when(record.date):<20}  {record.name:<10}  {outcome:<8}  {record.state:<10}  {data}")
    if next_cursor:
        lines.append(f"more: pipelinejobs job history {uuid} --after {next_cursor}")
    return "\n".join(lines)


def cmd_job_history(args: argparse.Namespace) -> int:
    """A job's full history from the event log, oldest first; ``--all`` reads every page."""
    from .store.base import iter_history

    with _open_store(_settings(args)) as store:
        if store.find_head(args.uuid) is None:
            raise PipelineJobsError(ErrorKind.NOT_FOUND, f"no job with uuid {args.uuid} in the {store.describe()}")
        try:
            if args.all:
                records, next_cursor = list(iter_history(store, args.uuid)), None
            else:
                page = store.history(args.uuid, after=args.after, limit=args.limit)
                records, next_cursor = page.records, page.next
        except ValueError as exc:
            raise PipelineJobsError(ErrorKind.BAD_MESSAGE, f"--after: {exc}") from exc
    shown = [record.to_document() for record in records]
    _emit(
        args, {"uuid": args.uuid, "events": shown, "next": next_cursor}, history_text(args.uuid, records, next_cursor)
    )
    return 0


# -- db -------------------------------------------------------------------------------------------
def cmd_db_init(args: argparse.Namespace) -> int:
    """Create the store's indexes (MongoDB) or tables (SQLite): once per deployment, safe to repeat."""
    from .store.factory import open_registry

    settings = _settings(args)
    with _open_store(settings) as store:
        store.ensure_indexes()
        registry = open_registry(settings, store)  # serve's nonces and executions
        try:
            registry.ensure_indexes()
        finally:
            registry.close()
        missing = store.missing_indexes()
        if not missing:
            copied = store.log_unlogged_jobs()
            if copied:
                log.warning("%d job(s) of an earlier version now have their history in the event log", copied)
        where = store.describe()
    if missing:
        raise PipelineJobsError(ErrorKind.STORAGE_UNAVAILABLE, f"{where}: still missing {', '.join(missing)}")
    _emit(args, {"store": where, "ready": True}, f"{where}: indexes ready")
    return 0


# -- nonce ----------------------------------------------------------------------------------------
def _with_registry(args: argparse.Namespace, work: Callable[[Any, Settings], int]) -> int:
    from .server.registry import words
    from .store.factory import open_registry

    settings = _settings(args)
    known = words(settings.section("serve").get("actors"))
    if known and args.actor not in known:
        raise PipelineJobsError(
            ErrorKind.NOT_FOUND, f"actor {args.actor} is not one of serve.actors ({', '.join(known)})"
        )
    store = _open_store(settings)
    try:
        registry = open_registry(settings, store)
        try:
            code = work(registry, settings)
        finally:
            registry.close()
    finally:
        store.close()
    if not known and args.run is cmd_nonce_create:
        print(
            f"pipelinejobs: note: serve.actors is not set, so actor {args.actor} could not be checked; "
            f"this nonce works only with `pipelinejobs serve --actor {args.actor}` "
            "(set serve.actors or _REACTOR_SERVE_ACTORS to have unknown actors refused)",
            file=sys.stderr,
        )
    return code


def _refused(exc: Exception) -> PipelineJobsError:
    return PipelineJobsError(ErrorKind.BAD_MESSAGE, str(exc))


def cmd_nonce_create(args: argparse.Namespace) -> int:
    from .server.registry import Refused, new_nonce, nonce_tenant

    def work(registry: Any, settings: Settings) -> int:
        try:
            nonce = new_nonce(
                actor_id=args.actor,
                owner=settings.identity.owner,
                tenant=nonce_tenant(settings),
                now=datetime.now(timezone.utc),
                max_uses=args.max_uses,
                level=args.level,
                description=args.description,
            )
        except Refused as exc:
            raise _refused(exc) from exc
        registry.create_nonce(nonce)
        uses = "unlimited uses" if nonce["maxUses"] == -1 else f"{nonce['maxUses']} use(s)"
        human = (
            f"nonce {nonce['id']} for actor {args.actor}: level {nonce['level']}, {uses}\n"
            f"use it as ...?x-nonce={nonce['id']} on the actor's messages URL"
        )
        _emit(args, nonce, human)
        return 0

    return _with_registry(args, work)


def cmd_nonce_list(args: argparse.Namespace) -> int:
    def work(registry: Any, settings: Settings) -> int:
        nonces = registry.list_nonces(args.actor)
        rows = [f"{'ID':<24}  {'LEVEL':<8}  {'USED':>5}  {'LEFT':>5}  DESCRIPTION"]
        rows += [
            f"{n['id']:<24}  {n['level']:<8}  {n['currentUses']:>5}  "
            f"{'inf' if n['remainingUses'] == -1 else n['remainingUses']:>5}  {n.get('description') or ''}"
            for n in nonces
        ]
        _emit(args, nonces, "\n".join(rows) if nonces else f"no nonces for actor {args.actor}")
        return 0

    return _with_registry(args, work)


def cmd_nonce_delete(args: argparse.Namespace) -> int:
    def work(registry: Any, settings: Settings) -> int:
        if not registry.delete_nonce(args.actor, args.nonce_id):
            raise PipelineJobsError(ErrorKind.NOT_FOUND, f"no such nonce for actor {args.actor}")
        _emit(args, {"deleted": True}, "nonce deleted")
        return 0

    return _with_registry(args, work)


# -- send -----------------------------------------------------------------------------------------
def cmd_send(args: argparse.Namespace) -> int:
    try:
        from .abaco import send_message
    except ImportError as exc:
        raise PipelineJobsError(ErrorKind.CONFIGURATION, "`send` needs pipelinejobs.abaco, which is missing") from exc
    message = _read_json(args.message, "the message")
    params: dict[str, str] = {}
    for pair in args.param:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise PipelineJobsError(ErrorKind.BAD_MESSAGE, f"--param takes NAME=VALUE, not {pair!r}")
        params[name] = value
    bearer = args.bearer or os.environ.get(BEARER_ENV) or _first_serve_token() or None
    logs.add_secrets([s for s in (bearer, args.tapis_token, args.nonce, params.get("token")) if s])
    response = send_message(
        args.actor,
        message,
        params or None,
        api_server=args.api_server,
        bearer=bearer,
        tapis_token=args.tapis_token,
        nonce=args.nonce,
        synchronous=args.sync,
    )
    if args.sync:
        kind = ErrorKind.from_value(response.get("kind"))
        if response.get("status") == "error" and kind is not None:  # the manager refused it
            _emit(args, response, json.dumps(response, indent=2, default=str))
            print(f"pipelinejobs: the actor refused the message: {response.get('message')}", file=sys.stderr)
            return EXIT_CODES[kind]
        human = json.dumps(response, indent=2, default=str)
    else:
        result = response.get("result") if isinstance(response, dict) else None
        execution = (result or {}).get("executionId") or (result or {}).get("execution_id")
        if execution:
            from .abaco import messages_url

            base = messages_url(args.actor, args.api_server).split("?", 1)[0].removesuffix("/messages")
            human = (
                f"sent; execution {execution} (queued: the actor has not answered yet)\n"
                f"its result: GET {base}/executions/{execution} (and .../logs), or send again with --sync to wait"
            )
        else:
            human = json.dumps(response, default=str)
    _emit(args, response, human)
    return 0


def _first_serve_token() -> str | None:
    """The first of serve's ``PIPELINEJOBS_API_TOKENS``, so one variable serves both sides on one machine."""
    from .server.registry import words

    tokens = words(os.environ.get(API_TOKENS_ENV))
    return tokens[0] if tokens else None


# -- serve ---------------------------------------------------------------------------------------
def _listen(host: str, port: int, *, workers: int = 1) -> Any:
    """Bind the listening socket before anything says "listening": a busy port is a clear error, not exit 3.

    With several workers the socket allows each worker a listening socket of its own on the same port
    (``SO_REUSEPORT``, see ``server.workers.WorkerListener``). A first bind without that option checks that
    nothing listens there yet: with it, a second serve on the port would silently share the traffic.
    """
    import socket

    from .server.workers import can_spread, shared_listener

    spread = workers > 1 and can_spread()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise PipelineJobsError(ErrorKind.CONFIGURATION, f"cannot listen on {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if spread:  # the port is free (and chosen, for port 0): bind again, open to the workers' sockets
            address = sock.getsockname()
            sock.close()
            sock = shared_listener(family, address)
        else:
            sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise PipelineJobsError(
            ErrorKind.CONFIGURATION,
            f"cannot listen on {host}:{port}: {reason} (is another server on that port? choose one with --port)",
        ) from exc
    sock.set_inheritable(True)
    return sock


def _start_wait_notice(settings: Settings) -> threading.Timer | None:
    """Serve prepares the store before it answers: say so if a MongoDB keeps it waiting."""
    uri = settings.mongodb_uri
    if uri is None:
        return None
    from .store.mongo import hosts_of

    timer = threading.Timer(
        WAIT_NOTICE_SECONDS,
        log.warning,
        (
            "waiting up to %.1f s for MongoDB at %s (mongodb.server_selection_timeout_ms)...",
            settings.mongodb_timeout_ms / 1000,
            hosts_of(uri.reveal()),
        ),
    )
    timer.daemon = True
    timer.start()
    return timer


def _tls_files(args: argparse.Namespace, section: dict[str, Any]) -> tuple[str, str] | None:
    """The certificate and key for HTTPS, checked here so a bad pair is a clear error before serving."""
    import ssl

    cert = args.tls_cert or section.get("tls_cert") or None
    key = args.tls_key or section.get("tls_key") or None
    if not cert and not key:
        return None
    if not (cert and key):
        raise PipelineJobsError(ErrorKind.CONFIGURATION, "HTTPS needs both --tls-cert and --tls-key")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise PipelineJobsError(
            ErrorKind.CONFIGURATION, f"cannot use the TLS certificate {cert} with key {key}: {reason}"
        ) from exc
    return str(cert), str(key)


def _workers(value: Any) -> int:
    """``--workers`` / ``serve.workers``: how many processes answer (default 1)."""
    try:
        count = int(value if value not in (None, "") else 1)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise PipelineJobsError(ErrorKind.CONFIGURATION, f"serve workers must be a whole number >= 1, not {value!r}")
    return count


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .server.app import create_app
    from .server.execution import describe, open_server, serve_config
    from .server.registry import words
    from .server.workers import configure_logging, run_workers

    settings = load_settings(os.environ, Path(args.config) if args.config else None)
    env_tokens = words(os.environ.get(API_TOKENS_ENV))
    config, plain = serve_config(
        settings, actors=args.actor, api_tokens=[*args.api_token, *env_tokens], api_server=args.api_server
    )
    formatter = configure_logging(settings, plain)
    section = settings.section("serve")
    host = args.host or str(section.get("host") or "127.0.0.1")
    port = args.port or int(section.get("port") or 8000)
    workers = _workers(args.workers if args.workers is not None else section.get("workers"))
    tls = _tls_files(args, section)
    sock = _listen(host, port, workers=workers)
    waiting = _start_wait_notice(settings)
    try:
        server = open_server(settings, config, plain)
    except BaseException:
        sock.close()
        raise
    finally:
        if waiting is not None:
            waiting.cancel()
    formatter.add_secrets(plain)
    if not len(config.api_tokens):
        log.warning("no API tokens configured: only nonces (made with `pipelinejobs nonce create`) are accepted")
    bound_port = sock.getsockname()[1]
    log.info(
        "pipelinejobs serve %s listening on %s://%s:%s for actor(s) %s "
        "(POST /actors/v2/{id}/messages and /v3/actors/{id}/messages); store: %s; %d API token(s) accepted",
        __version__,
        "https" if tls else "http",
        host,
        bound_port,
        ", ".join(config.actors),
        describe(server),
        len(config.api_tokens),
    )
    options: dict[str, Any] = {"ssl_certfile": tls[0], "ssl_keyfile": tls[1]} if tls else {}
    if workers > 1:
        log.info("%d worker processes; this one supervises them and runs the background loops", workers)
        try:
            run_workers(server, sock, workers, config_path=args.config, plain_tokens=plain, uvicorn_options=options)
        finally:
            sock.close()
        return 0
    uv_config = uvicorn.Config(
        create_app(server), host=host, port=bound_port, log_config=None, access_log=False, lifespan="on", **options
    )
    try:
        uvicorn.Server(uv_config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


# -- watch and retention (issue 10) ----------------------------------------------------------------
def _watch_view(store: Any, settings: Settings, job: dict[str, Any]) -> dict[str, Any] | None:
    """A job's deadlines (effective: config, pipeline, its own) and signs of life, for `job show`."""
    from . import watch

    record = store.watch_record(job["uuid"])
    if record is None:
        return None
    deadlines = watch.effective_deadlines(settings, job.get("pipeline_uuid"), record.get("deadlines"))
    keys = ("since", "last_seen", "due_at")
    return {"deadlines": deadlines, "own": record.get("deadlines"), **{k: record.get(k) for k in keys}}


def watch_text(view: dict[str, Any]) -> str:
    limits = ", ".join(
        f"{name.removesuffix('_seconds')} {value}s" for name, value in view["deadlines"].items() if value
    )
    return (
        f"  deadlines {limits or 'none'}{' (own)' if view.get('own') else ''}\n"
        f"  watch     in state since {_when(view.get('since'))}  last seen {_when(view.get('last_seen'))}"
        f"  due {_when(view.get('due_at'))}"
    )


def _at(args: argparse.Namespace) -> datetime:
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


def _watch_once(args: argparse.Namespace, settings: Settings) -> None:
    from . import watch

    with _open_store(settings) as store:
        report = watch.watch_pass(store, settings, _at(args), dry_run=args.dry_run)
        retained = None if args.dry_run or args.no_retention else watch.retention_pass(store, settings, _at(args))
    data = report.as_dict()
    if retained is not None:
        data["retention"] = retained.as_dict()
    verb = "would fail" if args.dry_run else "failed"
    lines = [f"judged {report.judged} due job(s); {verb} {len(report.failed)}"]
    lines += [
        f"  {f['uuid']}  {f['state']}: {f['meaning']} > {f['seconds']}s (last seen {f['last_seen']})"
        for f in report.failed
    ]
    if report.lost_races:
        lines.append(f"  {report.lost_races} changed after being judged (a real event won); not failed")
    if retained is not None and (retained.purged or retained.tombstones_expired):
        lines.append(f"retention: purged {len(retained.purged)}, tombstones expired {retained.tombstones_expired}")
    _emit(args, data, "\n".join(lines))
    sys.stdout.flush()


def cmd_watch(args: argparse.Namespace) -> int:
    """One watchdog pass (for cron or a scheduled actor), or one every N seconds with ``--every``."""
    from . import watch

    settings = _settings(args)
    if not args.every:
        _watch_once(args, settings)
        return 0
    watch.run_every(args.every, lambda: _watch_once(args, settings))
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    """Purge jobs past retention (with their log, leaving tombstones); ``--dry-run`` only counts."""
    from . import watch

    settings = _settings(args)
    with _open_store(settings) as store:
        report = watch.retention_pass(store, settings, _at(args), dry_run=args.dry_run)
    verb = "would purge" if args.dry_run else "purged"
    expired = "tombstones expiring" if args.dry_run else "tombstones expired"
    human = f"{verb} {len(report.purged)} job(s); {expired}: {report.tombstones_expired}"
    if report.changed:
        human += f"; {report.changed} changed meanwhile and were kept"
    _emit(args, report.as_dict(), "\n".join([human, *(f"  {uuid}" for uuid in report.purged)]))
    return 0


def _add_watch_commands(commands: Any, leaf: Callable[..., Any]) -> None:
    sub = leaf(commands, "watch", cmd_watch, "fail jobs past their deadlines (one pass; --every N to loop)")
    sub.add_argument("--every", type=float, default=0, help="run a pass every N seconds until interrupted")
    sub.add_argument("--dry-run", action="store_true", help="list what would be failed; change nothing")
    sub.add_argument("--no-retention", action="store_true", help="do not run the retention pass after it")
    sub.add_argument("--at", help="judge as of this ISO time instead of now (e.g. with --dry-run)")
    sub = leaf(commands, "retention", cmd_retention, "purge finished and hidden jobs past their retention")
    sub.add_argument("--dry-run", action="store_true", help="count what would be purged; change nothing")
    sub.add_argument("--at", help="judge as of this ISO time instead of now")


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts")
    common.add_argument("--config", default=argparse.SUPPRESS, help="config.yml to use (default: the checkout's)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log at INFO")

    parser = argparse.ArgumentParser(
        prog="pipelinejobs", description="PipelineJobs Manager: pipelines, jobs, nonces and a local Abaco endpoint."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--config", help="config.yml to use (default: the checkout's)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def leaf(group: Any, name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> Any:
        sub = group.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(run=func)
        return sub

    pipeline = commands.add_parser("pipeline", help="register pipelines").add_subparsers(metavar="ACTION")
    sub = leaf(pipeline, "register", cmd_pipeline_register, "register a pipeline from a JSON file (id, components)")
    sub.add_argument("file", help="JSON file with id, components, optional name/description/uuid")
    sub.add_argument("--uuid", help="use this uuid instead of the one computed from id and components")
    leaf(pipeline, "list", cmd_pipeline_list, "list the registered pipelines")
    sub = leaf(pipeline, "show", cmd_pipeline_show, "show a pipeline and its components")
    sub.add_argument("pipeline", help="the pipeline's uuid or id")

    job = commands.add_parser("job", help="create and inspect jobs").add_subparsers(metavar="ACTION")
    sub = leaf(job, "create", cmd_job_create, "create a job for a registered pipeline")
    sub.add_argument("--pipeline", required=True, help="the pipeline uuid")
    sub.add_argument("--archive-path", required=True, help="where the job's products go")
    sub.add_argument("--data", default="{}", help="run-time parameters: JSON, @file or - for stdin")
    sub.add_argument("--session", help="a session id correlating events (default: an adjective-animal name)")
    sub.add_argument("--archive-system", help="the storage system of archive_path (default: data-sd2e-community)")
    sub.add_argument("--child-of", action="append", default=[], metavar="UUID", help="a parent job's uuid (repeatable)")
    sub = leaf(job, "show", cmd_job_show, "show a job and its history")
    sub.add_argument("uuid")
    sub.add_argument("--full", action="store_true", help="show data whole instead of cut to one line")
    sub = leaf(job, "list", cmd_job_list, "list jobs, most recently updated first")
    sub.add_argument("--state", help="only jobs in this state, in any case (e.g. running)")
    sub.add_argument("--pipeline", help="only jobs of this pipeline uuid")
    sub.add_argument("--all", action="store_true", help="include deleted (hidden) jobs, marked (hidden)")
    sub.add_argument("--limit", type=int, default=100)

    sub = leaf(job, "history", cmd_job_history, "a job's full history from the event log, oldest first")
    sub.add_argument("uuid")
    sub.add_argument("--after", help="continue after this cursor (printed at the end of a page)")
    sub.add_argument("--limit", type=int, default=100, help="events per page (default 100)")
    sub.add_argument("--all", action="store_true", help="every event, all pages")

    sub = leaf(job, "event", cmd_job_event, "send an event to a job (as a message to the actor would)")
    sub.add_argument("uuid")
    sub.add_argument("name", help="the event, e.g. run, update, finish, fail")
    sub.add_argument("--data", help="the event's data: JSON object, @file or - for stdin")
    sub.add_argument("--token", required=True, help="the job's token (printed by `job create`) or an admin token")
    sub = leaf(job, "delete", cmd_job_delete, "hide a job, or remove it with --force (a tombstone is kept)")
    sub.add_argument("uuid")
    sub.add_argument("--force", action="store_true", help="remove the job instead of hiding it")
    sub.add_argument("--token", required=True, help="the job's token or an admin token")
    sub = leaf(job, "audit", cmd_job_audit, "a job's audit trail: creation, hides, tombstones")
    sub.add_argument("uuid")
    sub.add_argument("--full", action="store_true", help="show each change whole")

    db = commands.add_parser("db", help="prepare the store").add_subparsers(metavar="ACTION")
    leaf(db, "init", cmd_db_init, "create the indexes (MongoDB) or tables (SQLite); run once per deployment")

    nonce = commands.add_parser("nonce", help="manage the nonces `serve` accepts").add_subparsers(metavar="ACTION")
    sub = leaf(nonce, "create", cmd_nonce_create, "create a nonce for an actor")
    sub.add_argument("--actor", required=True)
    sub.add_argument("--max-uses", type=int, default=-1, help="-1 (default) for unlimited")
    sub.add_argument("--level", default="EXECUTE", choices=["READ", "EXECUTE", "UPDATE"])
    sub.add_argument("--description", default="")
    sub = leaf(nonce, "list", cmd_nonce_list, "list an actor's nonces")
    sub.add_argument("--actor", required=True)
    sub = leaf(nonce, "delete", cmd_nonce_delete, "delete a nonce")
    sub.add_argument("--actor", required=True)
    sub.add_argument("nonce_id")

    sub = leaf(commands, "send", cmd_send, "send a message to an actor (Abaco or `pipelinejobs serve`)")
    sub.add_argument("actor", help="the actor's messages URL, or its id with --api-server")
    sub.add_argument("message", help="the message: JSON, @file or - for stdin")
    sub.add_argument("--api-server", help="tenant base URL, e.g. https://api.sd2e.org")
    sub.add_argument("--bearer", help=f"bearer token (default: ${BEARER_ENV}, else the first of ${API_TOKENS_ENV})")
    sub.add_argument("--tapis-token", help="Tapis v3 token, sent as X-Tapis-Token")
    sub.add_argument("--nonce", help="send with ?x-nonce=... instead of a bearer token")
    sub.add_argument("--param", action="append", default=[], help="URL parameter NAME=VALUE (repeatable)")
    sub.add_argument("--sync", action="store_true", help="wait for the result (_abaco_synchronous=true)")

    sub = leaf(commands, "serve", cmd_serve, "serve Abaco's messages API for the configured actors")
    sub.add_argument("--host", help="interface to listen on (default: serve.host or 127.0.0.1)")
    sub.add_argument("--port", type=int, help="port (default: serve.port or 8000)")
    sub.add_argument("--actor", action="append", default=[], help="actor id to answer for (repeatable)")
    sub.add_argument(
        "--api-token", action="append", default=[], help=f"accepted bearer token (repeatable; or ${API_TOKENS_ENV})"
    )
    sub.add_argument("--api-server", help="base URL for _links and _abaco_api_server (default: the request's)")
    sub.add_argument("--tls-cert", help="PEM certificate (chain) to serve HTTPS with (default: serve.tls_cert)")
    sub.add_argument("--tls-key", help="PEM private key of --tls-cert (default: serve.tls_key)")
    sub.add_argument(
        "--workers", type=int, help="processes answering on the port (default: serve.workers or 1; one per core)"
    )
    _add_watch_commands(commands, leaf)
    notify_cli.add_commands(commands, leaf)  # subscription add|list|remove|test|deliveries, notify --drain
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    logs.configure(level="INFO" if args.verbose else "WARNING")
    try:
        code = args.run(args)
        sys.stdout.flush()  # a reader that went away is found here, not at interpreter exit
        return code
    except PipelineJobsError as exc:
        if args.json:
            print(dumps(exc.to_dict()))
        print(f"pipelinejobs: error ({exc.kind.value}): {exc.message}", file=sys.stderr)
        return EXIT_CODES[exc.kind]
    except BrokenPipeError:
        # `pipelinejobs job list --json | head`: the reader has what it wanted; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say so in one redacted line; -v adds the traceback
        log.error("internal error (%s); run with -v for the details", type(exc).__name__, exc_info=args.verbose)
        print(f"pipelinejobs: error ({ErrorKind.INTERNAL.value}): {type(exc).__name__}", file=sys.stderr)
        return EXIT_CODES[ErrorKind.INTERNAL]
    finally:
        for timer in _watchdogs:
            timer.cancel()
        _watchdogs.clear()


if __name__ == "__main__":
    sys.exit(main())
