"""Workflow engines on `pipelinejobs serve`: Nextflow's weblog (``POST /nextflow``) and Snakemake's
panoptes protocol (``/snakemake/...``).

An engine does not speak Abaco: it puts its credentials where it can (a URL, HTTP Basic)
and sends what it sends. Each route here reads the request that way, checks the credential
that authenticates it to serve (``auth.authorize_engine``: an API token, or a nonce of a
served actor with level EXECUTE), and hands an ``Intake`` to the one way in
(``Server.report`` -> ``runtime.handle_received``), where the engine's intake format
(``pipelinejobs/adapters``) makes it a message and the job's own token is checked.

Answers: 200 for every report serve could read, whatever became of it (the engines never
retry, and Snakemake 7/8 stop the workflow on 401, 403, 404 or 500), 401 for a credential
that does not check (serve's, or the job's), 404 for a job that does not exist.
"""

from __future__ import annotations

import base64
import binascii
import json
from contextlib import suppress
from typing import Any, NamedTuple
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import ErrorKind, PipelineJobsError
from ..intake import Intake, Origin, parse_message
from .abaco_records import Refused
from .auth import INVALID_JWT, EngineCaller, authorize_engine
from .execution import Server
from .http import JSONResponse, read_body, server_of

NEXTFLOW, SNAKEMAKE = "nextflow", "snakemake"
#: Refusals that are the caller's credential or job, answered with their own status; all else is 200.
_STATUSES = {ErrorKind.UNAUTHORIZED.value: 401, ErrorKind.NOT_FOUND.value: 404}


def decode_leniently(raw: bytes) -> str:
    """UTF-8, else Latin-1: Nextflow writes its body one byte per character, so é arrives as the byte 0xE9
    (invalid UTF-8), which Latin-1 reads back as é. Never an error."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str) -> Any:
    """The JSON value of ``text``, or ``text`` itself (the intake format says why it is no report)."""
    with suppress(ValueError, RecursionError):
        return json.loads(text, parse_constant=_not_json)
    return text


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """HTTP Basic's (user, password), or None without one; a malformed one is refused (401)."""
    header = request.headers.get("authorization", "")
    if header[:6].lower() != "basic ":
        return None
    try:
        user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Refused(INVALID_JWT, 401) from None
    if not sep:
        raise Refused(INVALID_JWT, 401)
    return user, password


def _origin(request: Request, who: EngineCaller) -> Origin:
    server = server_of(request)
    api_server = server.config.api_server or str(request.base_url).rstrip("/")
    return Origin(api_server=api_server, actor_id=who.actor, username=who.caller.user)


async def _report(server: Server, intake: Intake, operator: bool) -> tuple[int, dict[str, Any]]:
    """Run in place on a local store, in a worker thread on a networked one (as ``abaco_api._execute``)."""
    if server.store.local:
        return server.report(intake, operator)
    return await run_in_threadpool(server.report, intake, operator)


def _answer(result: dict[str, Any], **extra: Any) -> Response:
    status = _STATUSES.get(str(result.get("kind")), 200) if result.get("status") == "error" else 200
    return JSONResponse({**result, **extra}, status_code=status)


# -- Nextflow -----------------------------------------------------------------------------------
async def nextflow(request: Request) -> Response:
    """``POST /nextflow?uuid=JOB&x-nonce=NONCE&token=TOKEN``: one weblog post.

    The nonce may instead be HTTP Basic's user name and the job token its password
    (``weblog.basicToken = 'NONCE:TOKEN'``); URL parameters win.
    """
    server = server_of(request)
    basic = basic_credentials(request)
    query = request.query_params
    who = await authorize_engine(request, query.get("x-nonce") or (basic[0] if basic else None))
    raw = await read_body(request, 4 * server.settings.limit("max_message_bytes", 1048576))
    params = {name: query[name] for name in ("uuid", "token") if query.get(name)}
    if basic is not None and not params.get("token") and basic[1]:
        params["token"] = basic[1]
    intake = Intake(
        body=parse_json(decode_leniently(raw)),
        content_type="application/json",
        params=params,
        origin=_origin(request, who),
        channel=NEXTFLOW,
    )
    _, result = await _report(server, intake, who.caller.operator)
    return _answer(result)


# -- Snakemake ----------------------------------------------------------------------------------
class SnakemakeAddress(NamedTuple):
    """What a ``/snakemake/...`` path says: ``/snakemake[/<nonce>][/job/<token> | /pipeline/<uuid>]/<endpoint>``."""

    action: str  # create_workflow | update_workflow_status | service-info | workflow
    nonce: str | None = None
    token: str | None = None
    pipeline: str | None = None
    workflow: str | None = None  # the id of PUT /api/workflow/<id>


#: the methods each endpoint answers (7.x, 8.x and the 9.x plugin use the first)
_METHODS = {
    "create_workflow": ("GET", "POST"),
    "update_workflow_status": ("POST",),
    "service-info": ("GET",),
    "workflow": ("PUT", "POST"),
}
_LABELS = ("job", "pipeline")


def snakemake_address(path: str) -> SnakemakeAddress | None:
    """The parts of a path under ``/snakemake/``, or None when it is not one of the protocol's endpoints."""
    segments = [segment for segment in path.split("/") if segment]
    workflow = None
    if segments[-1:] in (["create_workflow"], ["update_workflow_status"]):
        action, base = segments[-1], segments[:-1]
    elif segments[-2:] == ["api", "service-info"]:
        action, base = "service-info", segments[:-2]
    elif len(segments) >= 3 and segments[-3:-1] == ["api", "workflow"]:
        action, base, workflow = "workflow", segments[:-3], segments[-1]
    else:
        return None
    nonce = base.pop(0) if base and base[0] not in _LABELS else None
    if not base:
        return SnakemakeAddress(action, nonce, workflow=workflow)
    if len(base) == 2 and base[0] == "job":
        return SnakemakeAddress(action, nonce, token=base[1], workflow=workflow)
    if len(base) == 2 and base[0] == "pipeline":
        return SnakemakeAddress(action, nonce, pipeline=base[1], workflow=workflow)
    return None


def _update_fields(raw: bytes, content_type: str, limit: int) -> dict[str, Any]:
    """``msg``, ``timestamp`` and ``id`` of an update, form-encoded (9.x, 8.x) or JSON (7.x, no Content-Type);
    ``msg`` is parsed from its JSON text (or, as older versions sent it, a Python repr)."""
    text = decode_leniently(raw)
    fields: Any = None
    if "json" in content_type or text.lstrip().startswith("{"):
        fields = parse_json(text)
    if not isinstance(fields, dict):
        fields = {name: values[-1] for name, values in parse_qs(text, keep_blank_values=True).items()}
    msg = fields.get("msg")
    if isinstance(msg, str):
        with suppress(PipelineJobsError):
            msg = parse_message(msg, "str", limit)
    return {"msg": msg, "timestamp": fields.get("timestamp"), "id": fields.get("id")}


async def snakemake(request: Request) -> Response:
    """``/snakemake/...``: the panoptes endpoints under an address that carries the credentials.

    ``GET .../api/service-info`` answers ``{"status": "running"}`` to a caller serve accepts (7.x checks it
    first); ``GET .../create_workflow`` answers ``{"id": ...}``, the id Snakemake sends back with each
    ``POST .../update_workflow_status``; ``PUT`` or ``POST .../api/workflow/<id>`` (8.x) is kept as a report.
    """
    server = server_of(request)
    address = snakemake_address(request.path_params["rest"])
    if address is None:
        raise Refused("Not a Snakemake (panoptes) endpoint: .../create_workflow, .../update_workflow_status.", 404)
    if request.method not in _METHODS[address.action]:
        raise Refused(f"{address.action} is answered to {' or '.join(_METHODS[address.action])}.", 405)
    who = await authorize_engine(request, address.nonce)
    if address.action == "service-info":
        return JSONResponse({"status": "running"})
    limit = server.settings.limit("max_message_bytes", 1048576)
    params = {"action": address.action}
    for name, value in (("path_token", address.token), ("pipeline", address.pipeline), ("id", address.workflow)):
        if value:
            params[name] = value
    body: Any
    if address.action == "create_workflow":
        query = request.query_params
        if query.get("workflow_id"):
            params["workflow_id"] = query["workflow_id"]
        body = {name: value for name, value in query.items() if name not in ("workflow_id", "x-nonce")}
    else:
        raw = await read_body(request, 4 * limit)
        if address.action == "workflow":
            body = parse_json(decode_leniently(raw))
        else:
            fields = _update_fields(raw, request.headers.get("content-type", ""), limit)
            if fields["id"] is not None:
                params["id"] = str(fields["id"])
            body = {"msg": fields["msg"], "timestamp": fields["timestamp"]}
    intake = Intake(body, "application/json", params=params, origin=_origin(request, who), channel=SNAKEMAKE)
    _, result = await _report(server, intake, who.caller.operator)
    if address.action != "create_workflow" or result.get("status") != "ok":
        return _answer(result)
    uuid = str(result["uuid"])
    # a job made for this run: the id carries its token, the one credential the 9.x plugin can send back
    run_id = f"{uuid}.{result['token']}" if result.get("action") == "create" and result.get("token") else uuid
    return JSONResponse({"id": run_id, "name": uuid, "status": "Running", "state": result.get("state")})


def engine_routes() -> list[Route]:
    return [
        Route("/nextflow", nextflow, methods=["POST"]),
        Route("/snakemake/{rest:path}", snakemake, methods=["GET", "POST", "PUT"]),
    ]
