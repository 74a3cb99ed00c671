"""Abaco's actor API on `pipelinejobs serve`: messages, nonces and executions of the served actors.

A POST is turned into the environment Abaco would give the container (MSG, the
content type, the query parameters, the ``_abaco_*`` ids) and handed to
``Server.execute`` (``execution.py``), which runs the same path as reactor.py,
with the JSON object already parsed here so that MSG is not parsed back.
Settings are the server's own, loaded once at start; query parameters only ever
reach the message.
"""

from __future__ import annotations

import json
import re
from contextlib import suppress
from typing import Any, NamedTuple
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import logs
from ..store.registry import Level, Record, abaco_time
from . import metrics
from .abaco_records import (
    BAD_NONCE_BODY,
    NONCE_NOT_FOUND,
    Links,
    Refused,
    display_execution,
    display_executions,
    display_logs,
    display_nonce,
    hashid,
    new_nonce,
)
from .auth import authorize_actor
from .execution import Server
from .http import JSONResponse, bearer, envelope, is_v3, read_body, server_of

log = logs.get_logger("server")

SERIALIZE_ERROR = "message POST body could not be serialized. Pass JSON data or use the message attribute."


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


def _base(request: Request) -> str:
    """The base URL of every link serve hands out: ``api_server``, never the request's ``Host`` header.

    A Host header is the client's to choose, and these links are stored (a job's ``agent`` and ``task``,
    execution and nonce ``_links``) for other tools to follow. ``serve`` always sets ``api_server`` (by
    default the address it listens on); an app made without one names the socket the request came in on.
    """
    configured = server_of(request).config.api_server
    if configured:
        return configured
    scope = request.scope
    host, port = scope.get("server") or ("localhost", None)
    host = f"[{host}]" if ":" in str(host) else str(host)
    return f"{scope['scheme']}://{host}" + (f":{port}" if port else "")


def _actor_root(request: Request, actor: str) -> str:
    return f"{_base(request)}/v3/actors/{actor}" if is_v3(request) else f"{_base(request)}/actors/v2/{actor}"


def _owner_link(request: Request, owner: str) -> str:
    return f"{_base(request)}/v3/oauth2/profiles/{owner}" if is_v3(request) else f"{_base(request)}/profiles/v2/{owner}"


def _links(request: Request) -> Links:
    return Links(_base(request), is_v3(request))


def _shown_msg(msg: Any, content_type: str) -> Any:
    """``msg`` in the reply as Abaco keeps it: the message attribute as a string, a binary body omitted."""
    if content_type == "application/octet-stream":
        return "binary - omitted"
    # a message attribute is never empty; an empty JSON body (``{}``, ``0``) is also "str" but stays as parsed
    return str(msg) if content_type == "str" and msg and not isinstance(msg, str) else msg


# -- endpoints ----------------------------------------------------------------------------------
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
    server = server_of(request)
    actor = request.path_params["actor_id"]
    caller = await authorize_actor(request, Level.EXECUTE)
    username = caller.user
    received = server.clock()
    body = await read_body(request, 4 * server.settings.limit("max_message_bytes", 1048576))
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
    token = bearer(request)  # the message's own secrets (token, x-nonce) are in env
    secrets = [token] if token else []
    execution, result = await _execute(server, env, execution, secrets, message.parsed, caller.operator)
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
    return envelope(request, {"executionId": execution_id, "msg": _shown_msg(msg, content_type), "_links": links})


async def get_messages(request: Request) -> Response:
    """How many messages wait in the actor's mailbox: none, as serve handles each as it arrives. The
    ``_links`` are Abaco's ``get_messages_hypermedia``: the messages URL and the actor owner's profile."""
    await authorize_actor(request, Level.READ)
    actor = request.path_params["actor_id"]
    links = {
        "self": f"{_actor_root(request, actor)}/messages",
        "owner": _owner_link(request, server_of(request).config.owner),
    }
    return envelope(request, {"messages": 0, "_links": links})


async def _nonce_body(request: Request) -> dict[str, Any]:
    """The nonce fields, as Abaco's request parser finds them: the JSON body (or form), then the query."""
    body = await read_body(request, 65536)
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
    server = server_of(request)
    owner = (await authorize_actor(request, Level.UPDATE, nonce_ok=False)).user
    body = await _nonce_body(request)
    field, other = ("max_uses", "maxUses") if is_v3(request) else ("maxUses", "max_uses")
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
    return envelope(request, display_nonce(nonce, _links(request)), "Actor nonce created successfully.")


async def list_nonces(request: Request) -> Response:
    await authorize_actor(request, Level.READ, nonce_ok=False)
    nonces = await run_in_threadpool(server_of(request).registry.list_nonces, request.path_params["actor_id"])
    shown = [display_nonce(nonce, _links(request)) for nonce in nonces]
    return envelope(request, shown, "Actor nonces retrieved successfully.")


async def nonce_detail(request: Request) -> Response:
    server = server_of(request)
    actor, nonce_id = request.path_params["actor_id"], request.path_params["nonce_id"]
    if request.method == "DELETE":
        await authorize_actor(request, Level.UPDATE, nonce_ok=False)
        if not await run_in_threadpool(server.registry.delete_nonce, actor, nonce_id):
            raise Refused(NONCE_NOT_FOUND)
        return envelope(request, None, "Actor nonce deleted successfully.")
    await authorize_actor(request, Level.READ, nonce_ok=False)
    nonce = await run_in_threadpool(server.registry.get_nonce, actor, nonce_id)
    if nonce is None:
        raise Refused(NONCE_NOT_FOUND)
    return envelope(request, display_nonce(nonce, _links(request)), "Actor nonce retrieved successfully.")


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
    server = server_of(request)
    actor = request.path_params["actor_id"]
    await authorize_actor(request, Level.READ)
    limit = _limit(request.query_params.get("limit"))
    rows = await run_in_threadpool(server.registry.list_executions, actor, limit) if limit else []
    totals = await run_in_threadpool(server.registry.execution_totals, actor)
    summary = display_executions(actor, server.config.owner, rows, totals, _links(request))
    return envelope(request, summary, "Actor executions retrieved successfully.")


async def _execution(request: Request) -> Record:
    server = server_of(request)
    actor, execution_id = request.path_params["actor_id"], request.path_params["execution_id"]
    await authorize_actor(request, Level.READ)
    found = await run_in_threadpool(server.registry.get_execution, actor, execution_id)
    if found is None:
        shown = execution_id[:64]
        raise Refused(f"No executions found with actor id of {actor} and execution id of {shown}.")
    return found


async def get_execution(request: Request) -> Response:
    execution = await _execution(request)
    return envelope(request, display_execution(execution, _links(request)), "Actor execution retrieved successfully.")


async def get_execution_logs(request: Request) -> Response:
    execution = await _execution(request)
    shown = display_logs(execution, server_of(request).config.owner, _links(request))
    return envelope(request, shown, "Logs retrieved successfully.")


def abaco_routes() -> list[Route]:
    """The actor routes, under Abaco v2's and Tapis v3's prefixes; messages first (the hot path)."""
    routes: list[Route] = []
    for prefix in ("/actors/v2/{actor_id}", "/v3/actors/{actor_id}"):
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
    return routes
