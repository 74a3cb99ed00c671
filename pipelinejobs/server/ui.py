"""The web view of `pipelinejobs serve` (``/ui/``): server-rendered HTML over the read API's queries.

Pages are Jinja2 templates (``templates/``, autoescaped) filled from ``queries.py``;
there is no query logic here, only presentation: relative times, the time a job spent
in each state, the state graph with the job's path. A little JavaScript
(``static/ui.js``) refreshes relative times, drops empty filter fields and polls
``/ui/jobs/{uuid}/updates`` so that a job page shows new events without a reload;
everything else works with JavaScript off.

Who may look, by read.py's rules: an API token or a READ nonce. A token is typed once
into the sign-in form and traded for a session: a signed value (expiry, random id, HMAC)
in an HTTP-only, SameSite=Strict cookie (Secure when clients use HTTPS), so the cookie never
carries the token and every serve worker accepts it (:class:`Sessions`); signing out holds in
every worker, after restarts too (the registry remembers it). A nonce rides in the URL as
``x-nonce`` (as Abaco takes nonces) and every link in the view keeps it; each page
(and each live-refresh poll) counts as one use. Without either, a page redirects to
the sign-in form. No page shows a job token, salt, API token or any nonce but the
viewer's own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .. import __version__, fsm, logs, queries, stategraph
from ..errors import PipelineJobsError
from ..store.base import JobStore
from .abaco_records import Refused
from .auth import authorize_read
from .http import JSONResponse, bearer, server_of, status_of
from .presentation import absolute, data_text, duration, iso, relative, safe_text, state_path, timeline
from .sessions import COOKIE, SESSION_SECONDS, Sessions, session_key

log = logs.get_logger("server.ui")

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
STATIC_FILES = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}

EVENTS_SHOWN = 1000  # a job page lists this many events; later ones are a "next" link away
POLL_MS = 3000
PAGE_SIZES = (25, 50, 100, 200)

#: Every UI answer: no caching, no referrer (a nonce may be in the URL), no framing, own scripts only.
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


def _sessions(request: Request) -> Sessions:
    state = request.app.state
    found = getattr(state, "ui_sessions", None)
    if found is None:
        server = server_of(request)
        found = state.ui_sessions = Sessions(session_key(server), server.clock, server.registry)
    return cast(Sessions, found)


async def _session_owner(request: Request) -> str | None:
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    return await run_in_threadpool(_sessions(request).owner, cookie, server_of(request).config.owner)


@dataclass(frozen=True)
class Viewer:
    """Who is looking and how: by session cookie, or by the nonce in the URL (kept in every link)."""

    owner: str
    nonce: str | None = None
    root: str = ""
    #: holds an API token (or a session made with one): sees what the API shows only to such holders
    operator: bool = False

    def link(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        """``/ui``-relative ``path`` with ``params`` (empty values dropped) and the viewer's nonce."""
        query = {k: str(v) for k, v in (params or {}).items() if v not in (None, "", False)}
        if self.nonce:
            query["x-nonce"] = self.nonce
        return f"{self.root}/ui{path}" + (f"?{urlencode(query)}" if query else "")


class SignInNeeded(Exception):
    """No usable credentials: the page answers with the sign-in form (or a redirect to it)."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or "")
        self.reason = reason


async def _viewer(request: Request) -> Viewer:
    """The session's owner, else read.py's rules (bearer token, then a READ nonce, one use counted)."""
    root = str(request.scope.get("root_path") or "").rstrip("/")
    owner = await _session_owner(request)
    if owner is not None:
        return Viewer(owner, None, root, operator=True)
    nonce = request.query_params.get("x-nonce") or None
    if not nonce and not bearer(request):
        raise SignInNeeded()
    try:
        owner = await authorize_read(request)
    except Refused as exc:
        raise SignInNeeded(exc.message) from None
    operator = bearer(request) is not None  # authorize_read refused a bearer token it does not accept
    return Viewer(owner, None if operator else nonce, root, operator=operator)


# -- rendering -----------------------------------------------------------------------------------
ENV = Environment(
    loader=FileSystemLoader(str(TEMPLATES)),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(absolute=absolute, iso=iso, duration=duration, data_text=data_text)
ENV.globals.update(states=[s.value for s in fsm.State], version=__version__, poll_ms=POLL_MS)


def render(template: str, **context: Any) -> str:
    return safe_text(ENV.get_template(template).render(**context))


def page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    """An HTML answer with the view's headers; ``viewer`` (or None) and ``now`` are always there."""
    context.setdefault("viewer", None)
    context.setdefault("now", server_of(request).clock())
    for name in ("error", "notice", "nav"):
        context.setdefault(name, None)
    context["ago"] = lambda value: relative(value, context["now"])
    body = render(template, **context)
    return Response(body, status_code=status, media_type="text/html; charset=utf-8", headers=HEADERS)


def _signin_redirect(request: Request) -> Response:
    """To the sign-in form, remembering where the browser was going (its query less any nonce)."""
    root = str(request.scope.get("root_path") or "").rstrip("/")
    query = {k: v for k, v in request.query_params.multi_items() if k != "x-nonce"}
    target = request.url.path + (f"?{urlencode(query)}" if query else "")
    return RedirectResponse(f"{root}/ui/signin?{urlencode({'next': target})}", status_code=303, headers=HEADERS)


Handler = Callable[[Request, Viewer], Awaitable[Response]]


def _viewing(handler: Handler, *, data: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """Sign-in first; then bad parameters and store failures as pages, never tracebacks.

    ``data``: the endpoint answers scripts (JSON), so a missing sign-in is a 401, not a redirect.
    """

    async def endpoint(request: Request) -> Response:
        try:
            viewer = await _viewer(request)
        except SignInNeeded as exc:
            if data:
                return JSONResponse({"signin": "/ui/signin"}, status_code=401, headers=HEADERS)
            if exc.reason is None:
                return _signin_redirect(request)
            return page(request, "signin.html", 401, error=exc.reason, next=_next_target(request.url.path))
        try:
            return await handler(request, viewer)
        except queries.QueryError as exc:
            status, title, message = 400, "Bad request", str(exc)
        except PipelineJobsError as exc:
            metrics = getattr(request.app.state, "metrics", None)
            if metrics is not None:
                metrics.store_error(exc)
            log.warning("web view: %s failed (%s)", request.url.path, exc.kind.value)
            status, title = status_of(exc.kind), "The store failed"
            message = "The job store cannot be reached; try again shortly." if status == 503 else exc.message
        if data:
            return JSONResponse({"error": message}, status_code=status, headers=HEADERS)
        return page(request, "error.html", status, viewer=viewer, title=title, error=message)

    return endpoint


def _next_target(raw: str | None) -> str:
    """Where to go after signing in: a path inside the view, never another site."""
    text = (raw or "").strip()
    if not text.startswith("/ui/") or text.startswith("//") or "\\" in text or len(text) > 2000:
        return "/ui/"
    return text


# -- the jobs list -------------------------------------------------------------------------------
def _pipelines(store: JobStore) -> dict[str, dict[str, Any]]:
    return {str(p.get("uuid")): p for p in queries.list_pipelines(store)}


def _input_time(raw: str | None) -> str:
    """A filter time as a ``datetime-local`` input shows it (UTC, no zone), or empty."""
    if not raw:
        return ""
    try:
        return queries.parse_time("time", raw).strftime("%Y-%m-%dT%H:%M:%S")
    except queries.QueryError:
        return ""


async def jobs_page(request: Request, viewer: Viewer) -> Response:
    """``/ui/jobs``: the read API's job list and per-state counts under the same filters."""
    params = request.query_params
    where = queries.parse_job_filter(params)
    limit = queries.parse_limit(params.get("limit"), default=50, maximum=max(PAGE_SIZES))
    after = params.get("after") or None
    store = server_of(request).store

    def load() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        return queries.list_jobs(store, where, after=after, limit=limit, counts=True), _pipelines(store)

    listing, pipelines = await run_in_threadpool(load)
    filters = {name: params.get(name, "") for name in queries.FILTER_PARAMS if params.get(name)}
    if "limit" in params:
        filters["limit"] = str(limit)
    chosen = set(where.states)
    chips = [
        {
            "state": state,
            "count": count,
            "current": chosen == {state},
            "href": viewer.link("/jobs", {**filters, "state": state}),
        }
        for state, count in listing["counts"].items()
    ]
    everything = {k: v for k, v in filters.items() if k != "state"}
    context = {
        "viewer": viewer,
        "jobs": listing["jobs"],
        "next_href": viewer.link("/jobs", {**filters, "after": listing["next"]}) if listing["next"] else None,
        "first_href": viewer.link("/jobs", filters) if after else None,
        "chips": chips,
        "all_chip": {
            "count": sum(listing["counts"].values()),
            "current": not chosen,
            "href": viewer.link("/jobs", everything),
        },
        "filters": filters,
        "times": {name: _input_time(params.get(name)) for name in queries.TIME_PARAMS},
        "pipelines": pipelines,
        "limit": limit,
        "page_sizes": PAGE_SIZES,
        "filtered": bool(everything),
    }
    return page(request, "jobs.html", nav="jobs", **context)


# -- a job -----------------------------------------------------------------------------------------
DELIVERIES_SHOWN = 50  # the job page's latest delivery attempts; the API pages through all


def delivery_attempts(server: Any, uuid: str) -> list[dict[str, Any]]:
    """A job's notification delivery attempts, newest first (the records `subscription deliveries` lists)."""
    rows = server.store.list_deliveries(job_uuid=uuid, limit=DELIVERIES_SHOWN)
    return [
        {
            "attempted": queries.jsonable(row.get("at")),
            "endpoint": row.get("target"),
            "event": row.get("event"),
            "attempt": row.get("attempt"),
            "status": row.get("outcome"),
            "code": row.get("status"),
            "error": row.get("error"),
        }
        for row in rows
    ]


def _job_view(server: Any, uuid: str, now: datetime, after: str | None, viewer: Viewer) -> dict[str, Any] | None:
    """Everything a job page shows, read in one worker thread (the job, up to EVENTS_SHOWN events).

    Delivery attempts (webhook hosts, errors) only for an operator, as the API's ``/deliveries``.
    """
    store = server.store
    job = queries.get_job(store, uuid)
    if job is None:
        return None
    events: list[dict[str, Any]] = []
    cursor = after
    more: str | None = None
    while len(events) < EVENTS_SHOWN:
        found = queries.job_events(store, uuid, after=cursor, limit=min(500, EVENTS_SHOWN - len(events)))
        if found is None:
            return None
        events += found["events"]
        cursor = more = found["next"]
        if cursor is None:
            break
    pipeline = queries.get_pipeline(store, str(job.get("pipeline_uuid") or "")) if job.get("pipeline_uuid") else None
    path = state_path(events)
    return {
        "job": job,
        "events": events,
        "more": more,
        "partial": after is not None,
        "pipeline": pipeline,
        "timeline": timeline(job, events, now),
        "graph": Markup(stategraph.state_machine_svg(path[:100])),
        "path": path,
        "deliveries": delivery_attempts(server, uuid) if viewer.operator else None,
        "after": events[-1]["cursor"] if events else after,
    }


async def job_page(request: Request, viewer: Viewer) -> Response:
    """``/ui/jobs/{uuid}``: the job, its timeline, every event, the state graph with its path."""
    server = server_of(request)
    uuid = request.path_params["uuid"]
    now = server.clock()
    after = request.query_params.get("after") or None
    view = await run_in_threadpool(_job_view, server, uuid, now, after, viewer)
    if view is None:
        message = f"No job found with identifier '{uuid[:64]}'."
        return page(request, "error.html", 404, viewer=viewer, title="No such job", error=message)
    live = view["more"] is None and not view["partial"]
    updates = viewer.link(f"/jobs/{uuid}/updates") if live else None
    return page(request, "job.html", viewer=viewer, now=now, updates=updates, nav="jobs", **view)


async def job_updates(request: Request, viewer: Viewer) -> Response:
    """``/ui/jobs/{uuid}/updates?after=CURSOR``: the job page's parts, re-rendered when events came after CURSOR."""
    server = server_of(request)
    uuid = request.path_params["uuid"]
    after = request.query_params.get("after") or None
    now = server.clock()
    newer = await run_in_threadpool(lambda: queries.job_events(server.store, uuid, after=after, limit=EVENTS_SHOWN))
    if newer is None:
        return JSONResponse({"gone": True}, status_code=404, headers=HEADERS)
    if not newer["events"]:
        return JSONResponse({"after": after, "count": 0}, headers=HEADERS)
    view = await run_in_threadpool(_job_view, server, uuid, now, None, viewer)
    if view is None:
        return JSONResponse({"gone": True}, status_code=404, headers=HEADERS)
    shown_from = len(view["events"]) - len(newer["events"])
    context = {"viewer": viewer, "now": now, "ago": lambda value: relative(value, now), **view}
    body = {
        "after": view["after"],
        "count": len(newer["events"]),
        "names": [e["name"] for e in newer["events"]][:20],
        "state": view["job"].get("state"),
        "total": len(view["events"]),
        "rows": render("_rows.html", **context, first_index=shown_from, rows=view["events"][shown_from:]),
        **{name: render(f"_{name}.html", **context) for name in ("summary", "timeline", "graph")},
    }
    return JSONResponse(body, headers=HEADERS)


# -- pipelines -------------------------------------------------------------------------------------
async def pipelines_page(request: Request, viewer: Viewer) -> Response:
    """``/ui/pipelines``: every pipeline with its visible jobs per state (the job counters /metrics shows)."""
    store = server_of(request).store

    def load() -> tuple[list[dict[str, Any]], dict[tuple[str, str], int]]:
        return queries.list_pipelines(store), store.job_counts()

    found, totals = await run_in_threadpool(load)
    totals = {key: n for key, n in totals.items() if n > 0}
    known = {str(p.get("uuid")) for p in found}
    orphans = sorted({pipeline for (_, pipeline) in totals if pipeline not in known})
    rows = []
    for pipeline in [*found, *({"uuid": uuid, "id": None, "name": None} for uuid in orphans)]:
        uuid = str(pipeline.get("uuid"))
        counts = {state.value: totals.get((state.value, uuid), 0) for state in fsm.State}
        rows.append({"pipeline": pipeline, "counts": counts, "total": sum(counts.values())})
    return page(request, "pipelines.html", viewer=viewer, rows=rows, nav="pipelines")


# -- signing in and out ----------------------------------------------------------------------------
def _same_origin(request: Request) -> bool:
    """A form POST from this site's own pages.

    Browsers say where a request comes from in ``Sec-Fetch-Site``; where it is missing,
    ``Origin`` (when sent) must be ours. (With ``Referrer-Policy: no-referrer`` a browser
    sends ``Origin: null`` even for its own forms, so Origin alone cannot decide.)
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser, or one too old to say: the cookie's SameSite=Strict still holds
    return origin.rstrip("/") == f"{request.url.scheme}://{request.url.netloc}"


async def _small_form(request: Request, limit: int = 16384) -> dict[str, str] | None:
    """A URL-encoded form of at most ``limit`` bytes (what the sign-in page sends); else None.

    Parsed with the standard library: python-multipart would be a dependency for one field.
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    return {name: values[-1] for name, values in fields.items()}


async def signin_form(request: Request) -> Response:
    owner = await _session_owner(request)
    target = _next_target(request.query_params.get("next"))
    if owner is not None:
        return RedirectResponse(target, status_code=303, headers=HEADERS)
    notice = "You are signed out." if request.query_params.get("signed_out") else None
    return page(request, "signin.html", next=target, notice=notice)


def _secure(request: Request) -> bool:
    """Whether the cookie is HTTPS-only: when clients use HTTPS (``api_server``), even if a TLS proxy in
    front of serve does not say so with ``X-Forwarded-Proto``; or when this request came over HTTPS."""
    return server_of(request).config.https or request.url.scheme == "https"


async def signin(request: Request) -> Response:
    """Trade an API token for a session cookie; the token is checked as read.py checks bearer tokens."""
    if not _same_origin(request):
        return page(request, "signin.html", 403, next="/ui/", error="Sign in from this site's own form.")
    form = await _small_form(request)
    if form is None:
        return page(request, "signin.html", 400, next="/ui/", error="Send the sign-in form as the page does.")
    token = str(form.get("token") or "").strip()
    target = _next_target(str(form.get("next") or ""))
    server = server_of(request)
    if not token or not server.config.api_tokens.check(token):
        return page(request, "signin.html", 401, next=target, error="That API token is not accepted here.")
    session_id = _sessions(request).open(server.config.owner)
    response = RedirectResponse(target, status_code=303, headers=HEADERS)
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=SESSION_SECONDS,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    log.info("web view: signed in")
    return response


async def signout(request: Request) -> Response:
    if not _same_origin(request):
        return page(request, "error.html", 403, title="Not from this site", error="Sign out from the view itself.")
    await run_in_threadpool(_sessions(request).close, request.cookies.get(COOKIE), server_of(request).config.owner)
    root = str(request.scope.get("root_path") or "").rstrip("/")
    response = RedirectResponse(f"{root}/ui/signin?signed_out=1", status_code=303, headers=HEADERS)
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict", secure=_secure(request))
    return response


# -- static files and routes -----------------------------------------------------------------------
async def static(request: Request) -> Response:
    """The view's own CSS and JavaScript: only the named files, so no path can be asked for."""
    name = request.path_params["name"]
    media = STATIC_FILES.get(name)
    if media is None:
        return Response("Not found", status_code=404, media_type="text/plain")
    headers = {"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"}
    return Response((STATIC / name).read_bytes(), media_type=media, headers=headers)


async def ui_root(request: Request) -> Response:
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"/ui/{query}", status_code=307)


def ui_routes() -> list[Route]:
    return [
        Route("/ui", ui_root, methods=["GET"]),
        Route("/ui/", _viewing(jobs_page), methods=["GET"]),
        Route("/ui/jobs", _viewing(jobs_page), methods=["GET"]),
        Route("/ui/jobs/{uuid}", _viewing(job_page), methods=["GET"]),
        Route("/ui/jobs/{uuid}/updates", _viewing(job_updates, data=True), methods=["GET"]),
        Route("/ui/pipelines", _viewing(pipelines_page), methods=["GET"]),
        Route("/ui/signin", signin_form, methods=["GET"]),
        Route("/ui/signin", signin, methods=["POST"]),
        Route("/ui/signout", signout, methods=["POST"]),
        Route("/ui/static/{name}", static, methods=["GET"]),
    ]
