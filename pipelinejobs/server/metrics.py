"""Prometheus metrics and readiness for `pipelinejobs serve` (``/metrics``, ``/readyz``).

Every series is named ``pipelinejobs_*`` and lives in the app's own registry.

- ``pipelinejobs_jobs{state,pipeline}``: visible jobs, from a **cached aggregate** (one
  grouped count on the store, indexed by (state, pipeline_uuid)). A scrape never counts
  jobs: it shows the last snapshot and, when that is older than ``metrics.jobs_refresh_seconds``
  (config.yml, default 30), starts one refresh in the background. Counters maintained by
  serve would only see serve's own messages, while reactor.py processes and other servers
  write to the same catalog; the aggregate is right for all writers and costs one query per
  interval whatever the scrape rate. ``pipelinejobs_jobs_snapshot_age_seconds`` says how old it is.
- Message outcomes as ``Server.execute`` returns them: events accepted by name, refusals by
  kind, replayed deliveries, stale scheduler callbacks, and store errors
  (``storage_unavailable``, from messages and from read requests).
- Request latency: a histogram by method and route template (never the raw path, whose
  uuids would make a series per job), and a request counter that adds the status.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import logs
from ..errors import ErrorKind, PipelineJobsError
from ..store.base import ReadStore
from .http import JSONResponse

log = logs.get_logger("server.metrics")
DEFAULT_REFRESH_SECONDS = 30.0
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class JobTotals:
    """Visible jobs per (state, pipeline): a snapshot refreshed in the background at most every ``interval``."""

    def __init__(self, store: ReadStore, interval: float, on_error: Any = None) -> None:
        self.store = store
        self.interval = interval
        self.on_error = on_error
        self._lock = threading.Lock()
        self._refreshing = False
        self._totals: dict[tuple[str, str], int] | None = None
        self._taken = 0.0  # monotonic time of the snapshot
        self._duration = 0.0
        self._first = threading.Event()  # set once the first refresh has ended, well or not

    def warm(self) -> None:
        """Start the first refresh in the background (at serve's start), so no scrape waits for it."""
        with self._lock:
            if self._totals is not None or self._refreshing:
                return
            self._refreshing = True
        threading.Thread(target=self._refresh, name="pipelinejobs-metrics", daemon=True).start()

    def _refresh(self) -> None:
        start = time.monotonic()
        totals = None
        try:
            totals = self.store.job_totals()
        except PipelineJobsError as exc:
            log.warning("job totals for /metrics not refreshed (%s): %s", exc.kind.value, exc.message)
            if self.on_error is not None:
                self.on_error(exc)
        finally:
            finish = time.monotonic()
            with self._lock:
                if totals is not None:
                    self._totals, self._taken, self._duration = totals, finish, finish - start
                self._refreshing = False
            self._first.set()

    def snapshot(self) -> tuple[dict[tuple[str, str], int] | None, float, float]:
        """(totals, age in seconds, last refresh duration); the first call waits for the first snapshot."""
        if self._totals is None and self._refreshing:
            self._first.wait(10.0)  # the warm-up is under way
        with self._lock:
            first = self._totals is None and not self._refreshing
            stale = self._totals is not None and time.monotonic() - self._taken >= self.interval
            start_background = stale and not self._refreshing
            if first or start_background:
                self._refreshing = True
        if first:
            self._refresh()
        elif start_background:
            threading.Thread(target=self._refresh, name="pipelinejobs-metrics", daemon=True).start()
        with self._lock:
            age = time.monotonic() - self._taken if self._totals is not None else 0.0
            return self._totals, age, self._duration


class _JobsCollector:
    """Turns the cached snapshot into gauges at scrape time."""

    def __init__(self, totals: JobTotals) -> None:
        self.totals = totals

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        totals, age, duration = self.totals.snapshot()
        jobs = GaugeMetricFamily(
            "pipelinejobs_jobs", "Visible jobs by state and pipeline (cached aggregate)", labels=["state", "pipeline"]
        )
        for (state, pipeline), count in sorted((totals or {}).items()):
            jobs.add_metric([state, pipeline], count)
        yield jobs
        yield GaugeMetricFamily(
            "pipelinejobs_jobs_snapshot_age_seconds", "Age of the job counts shown by pipelinejobs_jobs", value=age
        )
        yield GaugeMetricFamily(
            "pipelinejobs_jobs_snapshot_duration_seconds", "How long the last job count aggregate took", value=duration
        )


class Metrics:
    """The app's metrics; ``observe`` is handed every message outcome by ``Server.execute``."""

    def __init__(self, store: ReadStore, refresh_seconds: float = DEFAULT_REFRESH_SECONDS) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.events = Counter("pipelinejobs_events_accepted", "Events applied to jobs, by name", ["event"], registry=r)
        self.refusals = Counter("pipelinejobs_refusals", "Messages refused, by error kind", ["kind"], registry=r)
        self.replays = Counter("pipelinejobs_replays", "Repeated deliveries answered from the log", registry=r)
        self.stale = Counter(
            "pipelinejobs_stale_callbacks", "Late scheduler callbacks logged, job unchanged", registry=r
        )
        self.store_errors = Counter(
            "pipelinejobs_store_errors", "Requests that failed because the store was unavailable", registry=r
        )
        self.latency = Histogram(
            "pipelinejobs_http_request_duration_seconds",
            "HTTP request latency by method and route",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "pipelinejobs_http_requests",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.totals = JobTotals(store, refresh_seconds, on_error=self.store_error)
        r.register(_JobsCollector(self.totals))
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # serve --workers: the counters of every worker
            self.registry = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(self.registry)
            self.registry.register(_JobsCollector(self.totals))

    def observe(self, result: Mapping[str, Any]) -> None:
        """Count one message's outcome (the dict ``handle_env`` returns)."""
        if result.get("status") == "error":
            kind = str(result.get("kind") or "unknown")
            self.refusals.labels(kind).inc()
            if kind == ErrorKind.STORAGE_UNAVAILABLE.value:
                self.store_errors.inc()
        elif result.get("replayed"):
            self.replays.inc()
        elif result.get("stale"):
            self.stale.inc()
        elif result.get("action") == "event" and result.get("applied"):
            self.events.labels(str(result.get("event"))).inc()
        elif result.get("action") == "create":
            self.events.labels("create").inc()

    def store_error(self, exc: BaseException) -> None:
        if isinstance(exc, PipelineJobsError) and exc.kind is ErrorKind.STORAGE_UNAVAILABLE:
            self.store_errors.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


_NONCE_IN_PATH = re.compile(r"(/nonces/)[^/]+")
access_log = logs.get_logger("server")
EXECUTION_NOTE = "pipelinejobs.execution"  # scope key: a message POST's execution id and exit code, for its line


class RequestObserver:
    """ASGI middleware, one pass per HTTP request: its access-log line, latency and status.

    The log line is method, path (nonce ids masked) and status, never the query string (it can
    carry an ``x-nonce``); a message POST adds its execution id and exit code. Metrics go by
    route template, read from the route Starlette matched.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._labelled: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _children(self, method: str, route: str, code: int) -> tuple[Any, Any]:
        """The latency and request-count series of (method, route, status), looked up once each.

        ``labels()`` validates and locks on every call; the series are few (routes are templates).
        """
        key = (method, route, code)
        found = self._labelled.get(key)
        if found is None:
            found = (self.metrics.latency.labels(method, route), self.metrics.requests.labels(method, route, str(code)))
            self._labelled[key] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def remember(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, remember)
        finally:
            elapsed = time.perf_counter() - start
            matched = scope.get("route")  # set by Starlette's router on the scope we passed down
            route, method, code = str(getattr(matched, "path", "(unmatched)")), str(scope.get("method")), status["code"]
            latency, requests = self._children(method, route, code)
            latency.observe(elapsed)
            requests.inc()
            path = _NONCE_IN_PATH.sub(lambda m: m.group(1) + logs.MASK, scope.get("path", ""))
            access_log.info(
                "%s %s %s%s", method, path, code, f" ({scope[EXECUTION_NOTE]})" if EXECUTION_NOTE in scope else ""
            )


# -- routes -------------------------------------------------------------------------------------
async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    body = await run_in_threadpool(metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def readyz(request: Request) -> Response:
    """200 when the store answers a trivial read within 2 s; 503 with the reason when it does not."""
    server = request.app.state.server
    try:
        await run_in_threadpool(server.store.ping)
    except PipelineJobsError as exc:
        request.app.state.metrics.store_error(exc)
        body = {"status": "unavailable", "store": server.store.backend, "reason": exc.message}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready", "store": server.store.backend})


def metrics_routes() -> list[Route]:
    return [Route("/readyz", readyz, methods=["GET"]), Route("/metrics", metrics_endpoint, methods=["GET"])]


def install(app: Any, server: Any) -> Metrics:
    """Attach metrics to the app and to ``server.execute`` (``server.observe``)."""
    metrics = Metrics(server.store, float(server.settings.value("metrics", "jobs_refresh_seconds")))
    app.state.metrics = metrics
    server.observe = metrics.observe
    app.add_middleware(RequestObserver, metrics=metrics)
    metrics.totals.warm()
    return metrics
