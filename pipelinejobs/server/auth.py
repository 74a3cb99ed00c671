"""Who may do what on `pipelinejobs serve`: API tokens, and Abaco's rules for tokens and nonces.

Three credentials reach serve. An **API token** (``Authorization: Bearer`` or ``X-Tapis-Token``)
is the operator's: it may do everything. A **nonce** (``?x-nonce=``) belongs to one served
actor and has a level (READ < EXECUTE < UPDATE) and a number of uses; each request counts one.
A **job token** travels inside a message and is checked by the manager itself (``pipelinejobs.auth``),
never here. SECURITY.md has the table of routes and credentials.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import NamedTuple

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ..store.registry import Level
from .abaco_records import NONCE_MISSING, Refused, refusal
from .http import bearer, is_v3, server_of

NO_CREDENTIALS = "No JWT or nonce provided."
INVALID_JWT = "Invalid JWT."
NONCE_FOR_NONCES = "Nonces cannot be used to manage nonces; use a bearer token."
BEARER_ONLY = "Subscriptions are managed with an API token (Authorization: Bearer); nonces are not accepted."
# tapisservice's texts (tapisservice/auth.py validate_token) for a v3 token serve does not accept
TAPIS_UNPARSABLE = "Could not parse the Tapis access token."
TAPIS_NO_TENANT = (
    "Unable to process Tapis token; could not parse the tenant_id. It is possible "
    "the token is in a format no longer supported by the platform."
)
TAPIS_INVALID = "Invalid Tapis token."


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


async def use_nonce(request: Request, actor: str, nonce: str, level: Level) -> str:
    """Count one use of ``nonce`` for ``actor`` at ``level``; the user it acts as, or Abaco's refusal."""
    server = server_of(request)
    registry = server.registry
    used = await run_in_threadpool(registry.use_nonce, actor, nonce, level, server.clock())
    if used is None:
        raise refusal(await run_in_threadpool(registry.get_nonce, actor, nonce), level)
    return str(used.get("owner") or server.config.owner)


class Caller(NamedTuple):
    """Who a request acts as, and whether it holds one of serve's API tokens (the operator's credential)."""

    user: str
    operator: bool


async def authorize_actor(request: Request, level: Level, *, nonce_ok: bool = True) -> Caller:
    """Check the caller of an actor route as Abaco does; returns whom the request acts as.

    A token that checks wins and the nonce is not spent. A token that doesn't is refused on
    v3 even with a nonce (tapisservice calls the nonce check only when no token was sent).
    On v2 the tenant's gateway vouched for tokens serve cannot verify, so there a nonce still
    admits a request whose bearer token serve does not know.
    """
    server = server_of(request)
    actor = request.path_params["actor_id"]
    nonce = request.query_params.get("x-nonce") or None
    token = bearer(request)
    accepted = bool(token) and server.config.api_tokens.check(token or "")
    if token and not accepted and (is_v3(request) or not nonce or not nonce_ok):
        raise Refused(_tapis_refusal(token) if is_v3(request) else INVALID_JWT)
    if not accepted and not nonce:
        raise Refused(NO_CREDENTIALS)
    if not accepted and not nonce_ok:
        raise Refused(NONCE_FOR_NONCES)
    if actor not in server.config.actors:
        raise Refused(f"Actor with identifier '{actor[:128]}' not found", 404)
    if not accepted:
        return Caller(await use_nonce(request, actor, str(nonce), level), operator=False)
    return Caller(server.config.owner, operator=True)


def holds_api_token(request: Request) -> bool:
    """Whether the request carries one of serve's API tokens (a token that does not check is refused)."""
    token = bearer(request)
    if token is None:
        return False
    if not server_of(request).config.api_tokens.check(token):
        raise Refused(INVALID_JWT, 401)
    return True


async def authorize_read(request: Request) -> str:
    """The user a read acts as, or Refused (401) with Abaco's texts; a nonce use is counted.

    An API token, or a nonce of one of the served actors with level READ or higher.
    """
    server = server_of(request)
    if holds_api_token(request):
        return server.config.owner
    nonce = request.query_params.get("x-nonce") or None
    if not nonce:
        raise Refused(NO_CREDENTIALS, 401)
    for actor in server.config.actors:
        if await run_in_threadpool(server.registry.get_nonce, actor, nonce) is not None:
            return await use_nonce(request, actor, nonce, Level.READ)  # a spent or lower nonce: Abaco's 400
    raise Refused(NONCE_MISSING, 401)


class EngineCaller(NamedTuple):
    """Who an engine's report acts as: the caller, and the actor whose nonce it used (None with an API token)."""

    caller: Caller
    actor: str | None


async def authorize_engine(request: Request, nonce: str | None) -> EngineCaller:
    """An engine's request (``engines.py``): one of serve's API tokens, or a nonce of a served actor
    with level EXECUTE, of which one use is counted. Refused with 401 otherwise.

    ``nonce`` is where the engine could put one (the URL path, ``x-nonce``, HTTP Basic's user
    name). A bearer token that is not an API token is taken as the nonce (Snakemake 7/8 send
    ``$WMS_MONITOR_TOKEN`` so); beside a different nonce it is refused. A nonce authenticates the
    request only: changing a job also needs the job's token (``service.apply_report``).
    """
    server = server_of(request)
    token = bearer(request)
    if token is not None and server.config.api_tokens.check(token):
        return EngineCaller(Caller(server.config.owner, operator=True), None)
    if token is not None and nonce and token != nonce:
        raise Refused(INVALID_JWT, 401)
    candidate = nonce or token
    if not candidate:
        raise Refused(NO_CREDENTIALS, 401)
    registry, now = server.registry, server.clock()
    for actor in server.config.actors:  # the use is the check: one write, no read first (a report per rule job)
        used = await run_in_threadpool(registry.use_nonce, actor, candidate, Level.EXECUTE, now)
        if used is not None:
            return EngineCaller(Caller(str(used.get("owner") or server.config.owner), operator=False), actor)
    for actor in server.config.actors:  # refused: say why, as Abaco words it (a READ nonce, one used up)
        found = await run_in_threadpool(registry.get_nonce, actor, candidate)
        if found is not None:
            raise Refused(refusal(found, Level.EXECUTE).message, 401)
    raise Refused(NONCE_MISSING, 401)


def authorize_operator(request: Request) -> None:
    """API tokens only (subscriptions can send a job's data anywhere: a nonce is not enough)."""
    if bearer(request) is None:
        raise Refused(BEARER_ONLY, 401)
    holds_api_token(request)
