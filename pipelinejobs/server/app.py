"""`pipelinejobs serve`: Abaco's messages API for the configured actor ids, over HTTP.

A POST is turned into the environment Abaco would give the container (MSG, the
content type, the query parameters, the ``_abaco_*`` ids) and handed to
``Server.execute`` (``execution.py``), which runs the same path as reactor.py,
with the JSON object already parsed here so that MSG is not parsed back.
Settings are the server's own, loaded once at start; query parameters only ever
reach the message. This module holds the HTTP side: Abaco's message rules,
the response envelope, authentication, the routes and the app.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, NamedTuple
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__, logs, notify, watch
from ..errors import ErrorKind, PipelineJobsError
from . import metrics
from .execution import Server
from .jsontext import dumps_utf8
from .registry import (
    BAD_NONCE_BODY,
    NONCE_NOT_FOUND,
    Level,
    Links,
    Record,
    Refused,
    abaco_time,
    display_execution,
    display_executions,
    display_logs,
    display_nonce,
    hashid,
    new_nonce,
)

log = logs.get_logger("server")

SERIALIZE_ERROR = "message POST body could not be serialized. Pass JSON data or use the message attribute."
NO_CREDENTIALS = "No JWT or nonce provided."
INVALID_JWT = "Invalid JWT."
NONCE_FOR_NONCES = "Nonces cannot be used to manage nonces; use a bearer token."
# tapisservice's texts (tapisservice/auth.py validate_token) for a v3 token serve does not accept
TAPIS_UNPARSABLE = "Could not parse the Tapis access token."
TAPIS_NO_TENANT = (
    "Unable to process Tapis token; could not parse the tenant_id. It is possible "
    "the token is in a format no longer supported by the platform."
)
TAPIS_INVALID = "Invalid Tapis token."


class JSONResponse(StarletteJSONResponse):
    """Every answer: lone surrogates (from echoed input) become U+FFFD instead of a 500 after the fact.

    NaN in an echoed message is written as Abaco's Flask writes it, not refused.
    """

    def render(self, content: Any) -> bytes:
        return dumps_utf8(content, allow_nan=True, indent=None, separators=(",", ":"))


# -- Abaco's message rules ----------------------------------------------------------------------
class AbacoMessage(NamedTuple):
    """A POSTed message by Abaco's rules (§1)."""

    msg: Any  # as received, echoed in the reply and kept in the execution record
    content_type: str  # ``_abaco_Content_Type``
    raw: str | None  # MSG, what the container would get
    parsed: dict[str, Any] | None  # the JSON object whose repr MSG is: the manager reads it, not MSG


def abaco_message(query_message: str | None, content_type: str, body: bytes) -> AbacoMessage:
    """The message of a POST, by Abaco's rules (§1)."""
    media = content_type.split(";")[0].strip().lower()
    value: Any = query_message
    if not value and media == "application/x-www-form-urlencoded":
        value = (parse_qs(body.decode("utf-8", "replace")).get("message") or [""])[-1] or None
    parsed: Any = None
    parsed_ok = False
    if media != "application/octet-stream":
        with suppress(ValueError, RecursionError):
            parsed, parsed_ok = json.loads(body), True
    if not value and parsed_ok and isinstance(parsed, dict):
        value = parsed.get("message")
    if value:  # the message attribute wins; a dict arrives as its Python repr
        return AbacoMessage(value, "str", str(value), value if isinstance(value, dict) else None)
    if media == "application/octet-stream":
        return AbacoMessage(None, "application/octet-stream", None, None)
    if not parsed_ok:
        raise Refused(SERIALIZE_ERROR)
    kind = "application/json" if parsed else "str"
    return AbacoMessage(parsed, kind, str(parsed), parsed if isinstance(parsed, dict) else None)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes", "on")


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer " and header[7:].strip():
        return header[7:].strip()
    return request.headers.get("x-tapis-token", "").strip() or None


# -- responses ----------------------------------------------------------------------------------
def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _v3_keys(value: Any) -> Any:
    """Tapis v3 spells the envelope's result keys in snake case; message contents stay as sent."""
    if isinstance(value, list):
        return [_v3_keys(v) for v in value]
    if isinstance(value, dict):
        return {_snake(k): v if k in ("msg", "result", "_links") else _v3_keys(v) for k, v in value.items()}
    return value


def _is_v3(request: Request) -> bool:
    return request.url.path.startswith("/v3/")


def _envelope(request: Request, result: Any, message: str = "The request was successful", code: int = 200) -> Response:
    """Abaco's envelope; Tapis v3 (tapisservice's ``ok``/``error``) adds an empty ``metadata``."""
    status = "success" if code < 400 else "error"
    body: dict[str, Any] = {"status": status, "message": message, "version": __version__, "result": result}
    if _is_v3(request):
        body.update(result=_v3_keys(result), metadata={})
    return JSONResponse(body, status_code=code)


def _server(request: Request) -> Server:
    return request.app.state.server


def _base(request: Request) -> str:
    return _server(request).config.api_server or _request_base(request)


_BASES: dict[tuple[Any, ...], str] = {}  # what Starlette's base_url gives for (scheme, server, Host, root path)


def _request_base(request: Request) -> str:
    """The request's base URL, remembered by what it is made of: Starlette builds it anew (URL
    objects, a scope copy) for each request, and every message's environment needs it."""
    scope = request.scope
    key = (
        scope["scheme"],
        scope.get("server"),
        request.headers.get("host"),
        scope.get("app_root_path"),
        scope.get("root_path"),
    )
    base = _BASES.get(key)
    if base is None:
        if len(_BASES) >= 256:  # the Host header is the client's to choose: keep a few, not all
            _BASES.clear()
        base = _BASES[key] = str(request.base_url).rstrip("/")
    return base


def _actor_root(request: Request, actor: str) -> str:
    return f"{_base(request)}/v3/actors/{actor}" if _is_v3(request) else f"{_base(request)}/actors/v2/{actor}"


def _owner_link(request: Request, owner: str) -> str:
    return (
        f"{_base(request)}/v3/oauth2/profiles/{owner}" if _is_v3(request) else f"{_base(request)}/profiles/v2/{owner}"
    )


def _links(request: Request) -> Links:
    return Links(_base(request), _is_v3(request))


def _shown_msg(msg: Any, content_type: str) -> Any:
    """``msg`` in the reply as Abaco keeps it: the message attribute as a string, a binary body omitted."""
    if content_type == "application/octet-stream":
        return "binary - omitted"
    # a message attribute is never empty; an empty JSON body (``{}``, ``0``) is also "str" but stays as parsed
    return str(msg) if content_type == "str" and msg and not isinstance(msg, str) else msg


# -- authentication -----------------------------------------------------------------------------
def _tapis_refusal(token: str) -> str:
    """tapisservice's reason for refusing a token: it must be a JWT whose claims name a tenant."""
    parts = token.split(".")
    if len(parts) != 3:
        return TAPIS_UNPARSABLE
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=="))
    except (ValueError, binascii.Error, RecursionError):
        return TAPIS_UNPARSABLE
    if not isinstance(claims, dict):
        return TAPIS_UNPARSABLE
    return TAPIS_INVALID if "tapis/tenant_id" in claims else TAPIS_NO_TENANT


async def _authorize(request: Request, level: Level, *, nonce_ok: bool = True) -> str:
    """Check the caller as Abaco does; returns the user the request acts as.

    A token that checks wins and the nonce is not spent. A token that doesn't is refused on
    v3 even with a nonce (tapisservice calls the nonce check only when no token was sent).
    On v2 the tenant's gateway vouched for tokens serve cannot verify, so there a nonce still
    admits a request whose bearer token serve does not know.
    """
    server = _server(request)
    actor = request.path_params["actor_id"]
    nonce = request.query_params.get("x-nonce") or None
    token = _bearer(request)
    accepted = bool(token) and server.config.api_tokens.check(token or "")
    if token and not accepted and (_is_v3(request) or not nonce or not nonce_ok):
        raise Refused(_tapis_refusal(token) if _is_v3(request) else INVALID_JWT)
    if not accepted and not nonce:
        raise Refused(NO_CREDENTIALS)
    if not accepted and not nonce_ok:
        raise Refused(NONCE_FOR_NONCES)
    if actor not in server.config.actors:
        raise Refused(f"Actor with identifier '{actor[:128]}' not found", 404)
    if not accepted:
        used = await run_in_threadpool(server.registry.use_nonce, actor, str(nonce), level, server.clock())
        return str(used.get("owner") or server.config.owner)
    return server.config.owner


# -- endpoints ----------------------------------------------------------------------------------
async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(f"The message body is larger than {limit} bytes.", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(f"The message body is larger than {limit} bytes.", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _execute(server: Server, *args: Any) -> tuple[Record, Any]:
    """Run a message: in place on a local store, in a worker thread on a networked one.

    On SQLite the whole message is about a millisecond of CPU under this process's GIL; handing it to a
    worker thread and back cost a third of that again (measured with `make bench`), and bought no
    concurrency. On MongoDB the thread lets the loop serve other requests while this one waits on the
    server.
    """
    if server.store.local:
        return server.execute(*args)
    return await run_in_threadpool(server.execute, *args)


async def post_message(request: Request) -> Response:
    server = _server(request)
    actor = request.path_params["actor_id"]
    username = await _authorize(request, Level.EXECUTE)
    received = server.clock()
    body = await _read_body(request, 4 * server.settings.limit("max_message_bytes", 1048576))
    query = request.query_params
    message = abaco_message(query.get("message"), request.headers.get("content-type", ""), body)
    msg, content_type, raw = message.msg, message.content_type, message.raw
    execution_id = hashid()
    params = {name: value for name, value in query.items() if name != "message"}
    env = {
        **params,  # lowest precedence: Abaco's own variables and MSG win over query parameters
        "_abaco_actor_id": actor,
        "_abaco_execution_id": execution_id,
        "_abaco_api_server": _base(request),
        "_abaco_username": username,
        "_abaco_Content_Type": content_type,
    }
    env.pop("MSG", None)
    if raw is not None:
        env["MSG"] = raw
    execution: Record = {
        "id": execution_id,
        "actorId": actor,
        "status": "SUBMITTED",
        "executor": username,
        "messageReceivedTime": abaco_time(received),
    }
    bearer = _bearer(request)  # the message's own secrets (token, x-nonce) are in env
    secrets = [bearer] if bearer else []
    execution, result = await _execute(server, env, execution, secrets, message.parsed)
    request.scope[metrics.EXECUTION_NOTE] = f"execution {execution_id} exit code {execution['exitCode']}"
    if _truthy(query.get("_abaco_synchronous")):
        headers = {"x-abaco-execution-id": execution_id, "x-abaco-exit-code": str(execution["exitCode"])}
        return JSONResponse(result, headers=headers)
    root = _actor_root(request, actor)
    links = {
        "self": f"{root}/executions/{execution_id}",
        "owner": _owner_link(request, username),
        "messages": f"{root}/messages",
    }
    return _envelope(request, {"executionId": execution_id, "msg": _shown_msg(msg, content_type), "_links": links})


async def get_messages(request: Request) -> Response:
    await _authorize(request, Level.READ)
    root = _actor_root(request, request.path_params["actor_id"])
    return _envelope(request, {"messages": 0, "_links": {"messages": f"{root}/messages"}})


async def _nonce_body(request: Request) -> dict[str, Any]:
    """The nonce fields, as Abaco's request parser finds them: the JSON body (or form), then the query."""
    body = await _read_body(request, 65536)
    query = {k: v for k, v in request.query_params.items() if k != "x-nonce"}
    if not body.strip():
        return query
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        if media == "application/json" or body.lstrip()[:1] in (b"{", b"["):
            raise Refused(BAD_NONCE_BODY) from None
        value = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    if not isinstance(value, dict):
        raise Refused("The nonce request body must be a JSON object.")
    return {**query, **value}


async def create_nonce(request: Request) -> Response:
    server = _server(request)
    owner = await _authorize(request, Level.UPDATE, nonce_ok=False)
    body = await _nonce_body(request)
    field, other = ("max_uses", "maxUses") if _is_v3(request) else ("maxUses", "max_uses")
    nonce = new_nonce(
        actor_id=request.path_params["actor_id"],
        owner=owner,
        tenant=server.config.tenant,
        now=server.clock(),
        max_uses=body[field] if field in body else body.get(other, -1),
        level=body.get("level", "EXECUTE"),
        description=body.get("description", ""),
        field=field if field in body or other not in body else other,
    )
    await run_in_threadpool(server.registry.create_nonce, nonce)
    log.info("actor %s: nonce created (level %s, maxUses %s)", nonce["actorId"], nonce["level"], nonce["maxUses"])
    return _envelope(request, display_nonce(nonce, _links(request)), "Actor nonce created successfully.")


async def list_nonces(request: Request) -> Response:
    await _authorize(request, Level.READ, nonce_ok=False)
    nonces = await run_in_threadpool(_server(request).registry.list_nonces, request.path_params["actor_id"])
    shown = [display_nonce(nonce, _links(request)) for nonce in nonces]
    return _envelope(request, shown, "Actor nonces retrieved successfully.")


async def nonce_detail(request: Request) -> Response:
    server = _server(request)
    actor, nonce_id = request.path_params["actor_id"], request.path_params["nonce_id"]
    if request.method == "DELETE":
        await _authorize(request, Level.UPDATE, nonce_ok=False)
        if not await run_in_threadpool(server.registry.delete_nonce, actor, nonce_id):
            raise Refused(NONCE_NOT_FOUND)
        return _envelope(request, None, "Actor nonce deleted successfully.")
    await _authorize(request, Level.READ, nonce_ok=False)
    nonce = await run_in_threadpool(server.registry.get_nonce, actor, nonce_id)
    if nonce is None:
        raise Refused(NONCE_NOT_FOUND)
    return _envelope(request, display_nonce(nonce, _links(request)), "Actor nonce retrieved successfully.")


MAX_LIMIT = 1000  # serve's page cap; Abaco has none
_INTEGER = re.compile(r"[+-]?[0-9]+")


def _limit(raw: str | None) -> int:
    """``limit`` as Abaco's search reads it: a non-negative integer (default 100), with Abaco's texts."""
    if raw is None:
        return 100
    text = raw.strip()
    if not _INTEGER.fullmatch(text):
        raise Refused(f'Inputted "limit" paramater must be an int. Received: {raw[:64]}')
    digits = text.lstrip("+-").lstrip("0")
    if text.startswith("-") and digits:
        raise Refused(f'Inputted "limit" must be positive. Received: {raw[:64]}')
    return MAX_LIMIT if len(digits) > 6 else min(int(digits or "0"), MAX_LIMIT)


async def list_executions(request: Request) -> Response:
    server = _server(request)
    actor = request.path_params["actor_id"]
    await _authorize(request, Level.READ)
    limit = _limit(request.query_params.get("limit"))
    rows = await run_in_threadpool(server.registry.list_executions, actor, limit) if limit else []
    totals = await run_in_threadpool(server.registry.execution_totals, actor)
    summary = display_executions(actor, server.config.owner, rows, totals, _links(request))
    return _envelope(request, summary, "Actor executions retrieved successfully.")


async def _execution(request: Request) -> Record:
    server = _server(request)
    actor, execution_id = request.path_params["actor_id"], request.path_params["execution_id"]
    await _authorize(request, Level.READ)
    found = await run_in_threadpool(server.registry.get_execution, actor, execution_id)
    if found is None:
        shown = execution_id[:64]
        raise Refused(f"No executions found with actor id of {actor} and execution id of {shown}.")
    return found


async def get_execution(request: Request) -> Response:
    execution = await _execution(request)
    return _envelope(request, display_execution(execution, _links(request)), "Actor execution retrieved successfully.")


async def get_execution_logs(request: Request) -> Response:
    execution = await _execution(request)
    shown = display_logs(execution, _server(request).config.owner, _links(request))
    return _envelope(request, shown, "Logs retrieved successfully.")


async def health(request: Request) -> Response:
    server = _server(request)
    return JSONResponse({"status": "ok", "store": server.store.backend, "actors": list(server.config.actors)})


# -- errors, access log, app --------------------------------------------------------------------
async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return _envelope(request, None, exc.message, exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return _envelope(request, None, str(exc.detail), exc.status_code)


async def _pipelinejobs_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PipelineJobsError)
    log.warning("request failed (%s): %s", exc.kind.value, exc.message)
    code = 503 if exc.kind is ErrorKind.STORAGE_UNAVAILABLE else 500
    return _envelope(request, None, exc.message, code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _envelope(request, None, "Internal server error.", 500)


def _routes() -> list[Route]:
    from .metrics import metrics_endpoint, readyz
    from .read import read_routes
    from .subscriptions import subscription_routes
    from .ui import ui_routes

    routes: list[Route] = []
    for prefix in ("/actors/v2/{actor_id}", "/v3/actors/{actor_id}"):  # first: messages are the hot path
        routes += [
            Route(f"{prefix}/messages", post_message, methods=["POST"]),
            Route(f"{prefix}/messages", get_messages, methods=["GET"]),
            Route(f"{prefix}/nonces", create_nonce, methods=["POST"]),
            Route(f"{prefix}/nonces", list_nonces, methods=["GET"]),
            Route(f"{prefix}/nonces/{{nonce_id}}", nonce_detail, methods=["GET", "DELETE"]),
            Route(f"{prefix}/executions", list_executions, methods=["GET"]),
            Route(f"{prefix}/executions/{{execution_id}}", get_execution, methods=["GET"]),
            Route(f"{prefix}/executions/{{execution_id}}/logs", get_execution_logs, methods=["GET"]),
        ]
    routes += [Route("/healthz", health, methods=["GET"])]
    routes += [Route("/readyz", readyz, methods=["GET"]), Route("/metrics", metrics_endpoint, methods=["GET"])]
    routes += read_routes()  # the read API (issue 11): /jobs, /pipelines, /schemas, /state-machine
    routes += subscription_routes()  # notifications (issue 10): /subscriptions, /jobs/{uuid}/deliveries
    routes += ui_routes()  # the web view (issue 11): /ui/
    return routes


def start_background(server: Server) -> Callable[[], None]:
    """serve's background loops (the watchdog when ``deadlines.watch_every_seconds`` is set, the notification
    dispatcher unless ``notifications.every_seconds`` is 0); returns their stop.

    They run once per serve: in the app's process, or in the supervisor when ``--workers`` runs several.
    """
    every = watch.watch_every(server.settings)  # deadlines.watch_every_seconds: off unless set
    stop_watchdog = watch.start_background(server.store, server.settings, server.clock, every) if every else None
    stop_notify = notify.start_background(server.store, server.settings, server.clock)  # the outbox dispatcher

    def stop() -> None:
        if stop_notify is not None:
            stop_notify()
        if stop_watchdog is not None:
            stop_watchdog()

    return stop


def create_app(server: Server, *, background: bool = True) -> Starlette:
    """The ASGI app; it attaches the log capture at start and closes the store at shutdown.

    ``background``: run the background loops here (False in the workers of ``serve --workers``).
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        package_logger = logging.getLogger(logs.LOGGER_NAME)
        package_logger.addHandler(server.capture)
        stop_background = start_background(server) if background else None
        try:
            yield
        finally:
            if stop_background is not None:
                stop_background()
            package_logger.removeHandler(server.capture)
            server.close()

    app = Starlette(
        routes=_routes(),
        lifespan=lifespan,
        exception_handlers={
            Refused: _refused,
            HTTPException: _http_error,
            PipelineJobsError: _pipelinejobs_error,
            Exception: _internal_error,
        },
    )
    app.state.server = server
    metrics.install(app, server)  # /metrics and the access log: request latency, message outcomes, job counts
    return app
