"""The read API of `pipelinejobs serve`: jobs, their event logs, pipelines, schemas, the state machine.

JSON in Abaco's envelope (``status``, ``message``, ``version``, ``result``); the same
routes answer under ``/v3/`` with tapisservice's extra ``metadata``. Keys are snake case
in both, so the v3 answer is the v2 one. The queries are in ``pipelinejobs/queries.py``,
shared with any HTML view.

Who may read: a holder of one of serve's API tokens (``Authorization: Bearer`` or
``X-Tapis-Token``), or of a nonce of one of the served actors with level READ or higher
(``?x-nonce=``; each request counts as one use, as Abaco counts them). A token serve does
not accept is refused even alongside a nonce. The bundled schemas and the state machine
describe the software, not the jobs, and need no credentials.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import queries, stategraph
from ..errors import PipelineJobsError
from .abaco_records import Refused
from .auth import authorize_read
from .http import JSONResponse, envelope, server_of

Handler = Callable[[Request], Awaitable[Response]]


def answer(request: Request, result: Any, message: str = "The request was successful") -> Response:
    """Abaco's envelope around a read result, whose keys are already snake case (v3 rewrites none)."""
    return envelope(request, result, message, snake_case=False)


def _reader(handler: Handler, *, public: bool = False) -> Handler:
    """Authorize, turn bad parameters into 400s, and count store failures in the metrics."""

    async def endpoint(request: Request) -> Response:
        if not public:
            await authorize_read(request)
        try:
            return await handler(request)
        except queries.QueryError as exc:
            raise Refused(str(exc), 400) from None
        except PipelineJobsError as exc:
            metrics = getattr(request.app.state, "metrics", None)
            if metrics is not None:
                metrics.store_error(exc)
            raise

    return endpoint


def _not_found(what: str, name: str) -> Refused:
    return Refused(f"No {what} found with identifier '{name[:64]}'.", 404)


async def list_jobs(request: Request) -> Response:
    """``GET /jobs``: job summaries, newest created first, ``?after=`` the previous page's ``next``.

    Filters: ``state`` (one or comma-separated), ``pipeline``, ``session``, ``child_of``,
    ``archive_path`` (substring), ``created_after``/``created_before``,
    ``updated_after``/``updated_before`` (ISO 8601), ``hidden=true``; ``counts=true`` adds
    the jobs per state under the other filters.
    """
    params = request.query_params
    where = queries.parse_job_filter(params)
    limit = queries.parse_limit(params.get("limit"))
    counts = params.get("counts", "").strip().lower() in ("1", "true", "yes", "on")
    store = server_of(request).store
    body = await run_in_threadpool(
        lambda: queries.list_jobs(store, where, after=params.get("after") or None, limit=limit, counts=counts)
    )
    return answer(request, body, "Jobs retrieved successfully.")


async def count_jobs(request: Request) -> Response:
    """``GET /jobs/counts``: jobs per state under the list's filters (``state`` aside)."""
    where = queries.parse_job_filter(request.query_params)
    store = server_of(request).store
    counts = await run_in_threadpool(queries.count_jobs, store, where)
    return answer(request, {"counts": counts, "total": sum(counts.values())}, "Job counts retrieved successfully.")


async def get_job(request: Request) -> Response:
    uuid = request.path_params["uuid"]
    job = await run_in_threadpool(queries.get_job, server_of(request).store, uuid)
    if job is None:
        raise _not_found("job", uuid)
    return answer(request, job, "Job retrieved successfully.")


async def job_events(request: Request) -> Response:
    """``GET /jobs/{uuid}/events``: the job's whole log, oldest first, ``?after=``/``limit`` to page it.

    A page also stops before its events pass ``queries.EVENTS_PAGE_BYTES`` (4 MiB) of JSON, after one event
    at least; ``next`` says where to go on.
    """
    uuid = request.path_params["uuid"]
    params = request.query_params
    limit = queries.parse_limit(params.get("limit"), default=100, maximum=1000)
    store = server_of(request).store
    page = await run_in_threadpool(
        lambda: queries.job_events(store, uuid, after=params.get("after") or None, limit=limit)
    )
    if page is None:
        raise _not_found("job", uuid)
    return answer(request, page, "Job events retrieved successfully.")


async def list_pipelines(request: Request) -> Response:
    found = await run_in_threadpool(queries.list_pipelines, server_of(request).store)
    return answer(request, found, "Pipelines retrieved successfully.")


async def get_pipeline(request: Request) -> Response:
    uuid = request.path_params["uuid"]
    found = await run_in_threadpool(queries.get_pipeline, server_of(request).store, uuid)
    if found is None:
        raise _not_found("pipeline", uuid)
    return answer(request, found, "Pipeline retrieved successfully.")


async def list_schemas(request: Request) -> Response:
    return answer(request, queries.schema_names(), "Schemas retrieved successfully.")


async def get_schema(request: Request) -> Response:
    name = request.path_params["name"]
    found = queries.get_schema(name)
    if found is None:
        raise _not_found("schema", name)
    return JSONResponse(found, media_type="application/schema+json")


async def state_machine(request: Request) -> Response:
    """``GET /state-machine``: the transitions as JSON, or SVG with ``?format=svg`` (``path=A,B,..`` highlights)."""
    if request.query_params.get("format", "").lower() == "svg" or request.url.path.endswith(".svg"):
        path = [s.strip().upper() for s in request.query_params.get("path", "").split(",") if s.strip()]
        return Response(stategraph.state_machine_svg(path[:100]), media_type="image/svg+xml")
    return answer(request, stategraph.state_machine(), "State machine retrieved successfully.")


def read_routes() -> list[Route]:
    routes: list[Route] = []
    table: list[tuple[str, Handler, bool]] = [
        ("/jobs", list_jobs, False),
        ("/jobs/counts", count_jobs, False),
        ("/jobs/{uuid}", get_job, False),
        ("/jobs/{uuid}/events", job_events, False),
        ("/pipelines", list_pipelines, False),
        ("/pipelines/{uuid}", get_pipeline, False),
        ("/schemas", list_schemas, True),
        ("/schemas/{name}", get_schema, True),
        ("/state-machine", state_machine, True),
        ("/state-machine.svg", state_machine, True),
    ]
    for prefix in ("", "/v3"):
        for path, handler, public in table:
            routes.append(Route(prefix + path, _reader(handler, public=public), methods=["GET"]))
    return routes
