"""Sending a message to an Abaco actor, the way the reactors SDK does (abaco-runtime.md §4).

POST ``{"message": message}`` with the parameters in the query string, the sender's
provenance tags (the SDK's ``x_src_*`` and ``x_session``, which win over caller
parameters so a caller cannot pose as another actor), a bearer token (v2), an
``X-Tapis-Token`` (v3) or a nonce, a timeout, and capped exponential backoff on
network errors and 5xx.
A 4xx is the caller's mistake and is never retried. Errors say what happened
(HTTP status, Abaco's message) but never carry a token or a nonce.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import ErrorKind, PipelineJobsError
from .identifiers import session_name

if TYPE_CHECKING:  # httpx is imported lazily: importing this module stays cheap
    import httpx

#: The sender's environment variables and the provenance parameters they become (the reactors SDK's tags).
SENDER_TAGS = (
    ("_abaco_actor_id", "x_src_actor_id"),
    ("_abaco_execution_id", "x_src_execution_id"),
    ("APP_ID", "x_src_app_id"),
    ("JOB_ID", "x_src_job_id"),
    ("EVENT", "x_src_event"),
    ("UUID", "x_src_uuid"),
    ("_event_uuid", "x_session"),
)
#: Where the sender's session is read when no ``_event_uuid`` names it, first match wins.
SESSION_VARS = ("x_session", "SESSION")
#: Any of these in the environment means the sender runs inside Abaco.
ABACO_VARS = ("_abaco_actor_id", "_abaco_execution_id")
MAX_ERROR_CHARS = 300
_AUTH_WORDS = ("jwt", "nonce", "permission", "token", "unauthori")


class AbacoError(PipelineJobsError):
    """Abaco refused the message or could not be reached; ``status_code`` is None for network errors."""

    def __init__(self, kind: ErrorKind, message: str, *, status_code: int | None = None, **details: Any) -> None:
        super().__init__(kind, message, status_code=status_code, **details)
        self.status_code = status_code


def messages_url(actor: str, api_server: str | None) -> str:
    """``actor`` itself when it is a URL, else the v2 messages URL of that actor id (no ``//``)."""
    if actor.startswith(("http://", "https://")):
        return actor
    if not api_server:
        raise AbacoError(ErrorKind.CONFIGURATION, f"actor '{actor[:64]}' is an id; api_server is needed to reach it")
    return f"{api_server.rstrip('/')}/actors/v2/{actor.strip('/')}/messages"


def with_params(url: str, params: Mapping[str, Any]) -> str:
    """``url`` with ``params`` added to its query string, URL-encoded; a name in both takes ``params``' value."""
    parts = urlsplit(url)
    given = {str(k): _param_text(v) for k, v in params.items() if v is not None}
    pairs = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in given]
    pairs += list(given.items())
    return urlunsplit(parts._replace(query=urlencode(pairs)))


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def provenance(env: Mapping[str, str] | None) -> dict[str, str]:
    """The sender's tags: ``x_src_*`` and ``x_session`` from ``env``, as the reactors SDK derives them.

    ``x_session`` is ``_event_uuid``, else ``x_session``, else ``SESSION``; inside Abaco
    one is always sent, and when none is set it is an adjective-animal name (the SDK's
    nickname) seeded by the execution, so one execution's messages share a session.
    Outside Abaco only what ``env`` holds is sent.
    """
    if not env:
        return {}
    found = {param: env[name] for name, param in SENDER_TAGS if env.get(name)}
    if "x_session" not in found:
        session = next((env[name] for name in SESSION_VARS if env.get(name)), None)
        if session is None and any(env.get(name) for name in ABACO_VARS):
            session = session_name(env.get("_abaco_execution_id") or env.get("_abaco_actor_id"))
        if session:
            found["x_session"] = session
    return found


def send_message(
    actor: str,
    message: Any,
    params: Mapping[str, Any] | None = None,
    *,
    api_server: str | None = None,
    bearer: str | None = None,
    tapis_token: str | None = None,
    nonce: str | None = None,
    timeout: float = 10.0,
    retries: int = 3,
    synchronous: bool = False,
    client: httpx.Client | None = None,
    env: Mapping[str, str] | None = None,
    backoff: float = 0.5,
    max_backoff: float = 8.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """POST ``message`` to ``actor`` (an actor id or a full messages URL) and return Abaco's JSON answer.

    ``env`` is the environment of the running actor (e.g. ``os.environ``): it supplies
    the provenance parameters (``provenance``) and, when ``api_server`` is not given,
    ``_abaco_api_server``. The sender's tags win over ``params`` and over a query in
    ``actor``'s URL, as in the SDK, so a caller cannot spoof ``x_src_actor_id``. Up to ``retries``
    retries follow a connection error, a timeout or a 5xx, after ``backoff * 2**n``
    seconds capped at ``max_backoff``. A timed-out POST may still have been delivered,
    so the manager treats a repeated event as a repeat, not a new fact.
    With ``synchronous`` the answer is the execution's result: a JSON object, else
    the last JSON-object line of its logs, else ``{"logs": text}``.
    """
    import httpx

    query = {**dict(params or {}), **provenance(env)}
    if nonce:
        query["x-nonce"] = nonce
    if synchronous:
        query["_abaco_synchronous"] = "true"
    base = messages_url(actor, api_server or (env or {}).get("_abaco_api_server"))
    url = with_params(base, query)
    where = _where(base)
    headers = {"Accept": "application/json"}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    if tapis_token:
        headers["X-Tapis-Token"] = tapis_token
    secrets = [s for s in (bearer, tapis_token, nonce, *_query_values(url)) if s]
    own_client = client is None
    http = client or httpx.Client(timeout=timeout)
    try:
        attempt = 0
        while True:
            try:
                response = http.post(url, json={"message": message}, headers=headers, timeout=timeout)
            except httpx.TransportError as exc:
                if attempt >= retries:
                    raise AbacoError(
                        ErrorKind.REMOTE_UNAVAILABLE,
                        f"could not reach {where} after {attempt + 1} attempt(s) ({type(exc).__name__})",
                        url=where,
                        attempts=attempt + 1,
                    ) from None
            else:
                if response.status_code < 400:
                    return _answer(response, synchronous)
                if response.status_code < 500 or attempt >= retries:
                    raise _http_error(response, where, attempt + 1, secrets)
            sleep(min(max_backoff, backoff * 2**attempt))
            attempt += 1
    finally:
        if own_client:
            http.close()


def _where(url: str) -> str:
    """Scheme, host and path only: the query may hold a nonce or a job token."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))


def _query_values(url: str) -> list[str]:
    return [value for _, value in parse_qsl(urlsplit(url).query) if len(value) >= 4]


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "*****")
    return text[:MAX_ERROR_CHARS]


def _abaco_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return response.reason_phrase


def _http_error(response: httpx.Response, where: str, attempts: int, secrets: list[str]) -> AbacoError:
    status = response.status_code
    said = _scrub(_abaco_message(response), secrets)
    if status >= 500:
        kind = ErrorKind.REMOTE_UNAVAILABLE
    elif status in (401, 403) or any(word in said.lower() for word in _AUTH_WORDS):
        kind = ErrorKind.UNAUTHORIZED
    elif status == 404:
        kind = ErrorKind.NOT_FOUND
    else:
        kind = ErrorKind.BAD_MESSAGE
    return AbacoError(
        kind,
        f"Abaco answered HTTP {status} for {where}: {said}",
        status_code=status,
        url=where,
        attempts=attempts,
        abaco_message=said,
    )


def _answer(response: httpx.Response, synchronous: bool) -> dict[str, Any]:
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    if synchronous:  # real Abaco returns the execution's logs; the actor's answer is its last JSON line
        for line in reversed(text.splitlines()):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
        return {"logs": text}
    raise AbacoError(
        ErrorKind.BAD_MESSAGE,
        f"Abaco answered HTTP {response.status_code} with a body that is not a JSON object",
        status_code=response.status_code,
    )
