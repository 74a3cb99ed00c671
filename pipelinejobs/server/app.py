"""`pipelinejobs serve`'s ASGI app: its routes, how errors become answers, its background loops.

The routes live in one module per concern: Abaco's actor API (``abaco_api``), workflow engines'
reports (``engines``), the read API (``read``), notifications (``subscriptions``), the web view
(``ui``) and metrics (``metrics``).
Each imports its helpers from ``http`` and ``auth``; this module only puts them together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import logs, watch
from ..errors import PipelineJobsError
from ..notify import dispatcher
from . import metrics
from .abaco_api import abaco_routes
from .abaco_records import Refused
from .engines import engine_routes
from .execution import Server
from .http import JSONResponse, envelope, server_of, shown_path, status_of
from .read import read_routes
from .subscriptions import subscription_routes
from .ui import ui_routes

log = logs.get_logger("server")


async def health(request: Request) -> Response:
    server = server_of(request)
    return JSONResponse({"status": "ok", "store": server.store.backend, "actors": list(server.config.actors)})


# -- errors -------------------------------------------------------------------------------------
async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return envelope(request, None, exc.message, exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return envelope(request, None, str(exc.detail), exc.status_code)


async def _pipelinejobs_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PipelineJobsError)
    log.warning("request failed (%s): %s", exc.kind.value, exc.message)
    return envelope(request, None, exc.message, status_of(exc.kind))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("internal error on %s %s", request.method, shown_path(request.url.path), exc_info=exc)
    return envelope(request, None, "Internal server error.", 500)


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client left (or was cut off for sending too slowly) before its body arrived: nobody to answer."""
    return Response(status_code=400)


#: max-age one year: browsers that saw it use HTTPS for this host from then on
HSTS = (b"strict-transport-security", b"max-age=31536000")


class StrictTransportSecurity:
    """Adds HSTS to every answer; installed when clients use HTTPS (``api_server`` is https)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), HSTS]}
            await send(message)

        await self.app(scope, receive, with_hsts)


def _routes() -> list[Route]:
    routes = abaco_routes()  # first: messages are the hot path
    routes += engine_routes()  # /nextflow, /snakemake/...: workflow engines' reports
    routes += [Route("/healthz", health, methods=["GET"])]
    routes += metrics.metrics_routes()  # /metrics, /readyz
    routes += read_routes()  # /jobs, /pipelines, /schemas, /state-machine
    routes += subscription_routes()  # /subscriptions, /jobs/{uuid}/deliveries
    routes += ui_routes()  # the web view: /ui/
    return routes


def start_background(server: Server) -> Callable[[], None]:
    """serve's background loops (the watchdog when ``deadlines.watch_every_seconds`` is set, the notification
    dispatcher unless ``notifications.every_seconds`` is 0, the job counts' recount); returns their stop.

    They run once per serve: in the app's process, or in the supervisor when ``--workers`` runs several.
    """
    every = watch.watch_every(server.settings)  # deadlines.watch_every_seconds: off unless set
    stop_watchdog = watch.start_background(server.store, server.settings, server.clock, every) if every else None
    stop_notify = dispatcher.start_background(server.store, server.settings, server.clock)  # the outbox dispatcher
    recount_every = float(server.settings.value("metrics", "recount_seconds"))
    stop_recount = metrics.start_recounting(server.store, recount_every)

    def stop() -> None:
        stop_recount()
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
            ClientDisconnect: _client_gone,
            HTTPException: _http_error,
            PipelineJobsError: _pipelinejobs_error,
            Exception: _internal_error,
        },
    )
    app.state.server = server
    if server.config.https:
        app.add_middleware(StrictTransportSecurity)
    metrics.install(app, server)  # /metrics and the access log: request latency, message outcomes, job counts
    return app
