"""What every route of `pipelinejobs serve` shares: reading the request, answering in Abaco's envelope,
and one table from error kinds to HTTP statuses.

Routes stay thin (parse, call one function, render); they import their helpers from here,
never from each other or from ``app.py``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response

from .. import __version__
from ..errors import ErrorKind
from ..jsontext import dumps_utf8
from ..logs import MASK
from .abaco_records import Refused

if TYPE_CHECKING:
    from .execution import Server

#: The HTTP status of a refusal of each kind, for every route but the messages endpoint (where, as
#: under Abaco, a refused message is an execution that ran and exited 1, in a 200 answer).
STATUS: dict[ErrorKind, int] = {
    ErrorKind.BAD_MESSAGE: 400,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.INVALID_TRANSITION: 409,
    ErrorKind.CONFLICT: 409,
    ErrorKind.STORAGE_UNAVAILABLE: 503,
    ErrorKind.REMOTE_UNAVAILABLE: 502,
    ErrorKind.CONFIGURATION: 500,
    ErrorKind.INTERNAL: 500,
}


_NONCE_IN_PATH = re.compile(r"(/nonces/)[^/]+")
#: words of a ``/snakemake/...`` address that are no credential (``engines.snakemake_address``)
_SNAKEMAKE_WORDS = frozenset({"job", "pipeline", "create_workflow", "update_workflow_status", "api", "service-info"})


def shown_path(path: str) -> str:
    """A request path as a log line may show it: nonce ids and the credentials of a Snakemake address
    (its nonce, a job token, the id that may carry one) masked; a pipeline uuid is kept."""
    path = _NONCE_IN_PATH.sub(lambda m: m.group(1) + MASK, path)
    if not path.startswith("/snakemake/"):
        return path
    segments = path.split("/")
    for index in range(2, len(segments)):
        word, before = segments[index], segments[index - 1]
        kept = word in _SNAKEMAKE_WORDS or before == "pipeline" or (word, before) == ("workflow", "api")
        if word and not kept:
            segments[index] = MASK
    return "/".join(segments)


def status_of(kind: ErrorKind) -> int:
    return STATUS[kind]


class JSONResponse(StarletteJSONResponse):
    """Every answer: lone surrogates (from echoed input) become U+FFFD instead of a 500 after the fact.

    NaN in an echoed message is written as Abaco's Flask writes it, not refused.
    """

    def render(self, content: Any) -> bytes:
        return dumps_utf8(content, allow_nan=True, indent=None, separators=(",", ":"))


def server_of(request: Request) -> Server:
    """The serve state a request runs against (``create_app`` puts it on the app)."""
    server: Server = request.app.state.server
    return server


def bearer(request: Request) -> str | None:
    """The request's token: ``Authorization: Bearer`` (Abaco v2), else ``X-Tapis-Token`` (v3)."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer " and header[7:].strip():
        return header[7:].strip()
    return request.headers.get("x-tapis-token", "").strip() or None


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes (declared or streamed)."""
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


def is_v3(request: Request) -> bool:
    return request.url.path.startswith("/v3/")


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def v3_keys(value: Any) -> Any:
    """Tapis v3 spells the envelope's result keys in snake case; message contents stay as sent."""
    if isinstance(value, list):
        return [v3_keys(v) for v in value]
    if isinstance(value, dict):
        return {_snake(k): v if k in ("msg", "result", "_links") else v3_keys(v) for k, v in value.items()}
    return value


def envelope(
    request: Request,
    result: Any,
    message: str = "The request was successful",
    code: int = 200,
    *,
    snake_case: bool = True,
) -> Response:
    """Abaco's envelope; Tapis v3 (tapisservice's ``ok``/``error``) adds an empty ``metadata``.

    ``snake_case``: on v3, rewrite the result's Abaco (camelCase) keys; off for results whose keys are
    already snake case and may hold the user's own data (the read API's jobs).
    """
    status = "success" if code < 400 else "error"
    body: dict[str, Any] = {"status": status, "message": message, "version": __version__, "result": result}
    if is_v3(request):
        body.update(result=v3_keys(result) if snake_case else result, metadata={})
    return JSONResponse(body, status_code=code)
