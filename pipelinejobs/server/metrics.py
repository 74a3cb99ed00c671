"""Prometheus metrics and readiness for `pipelinejobs serve` (``/metrics``, ``/readyz``).

Every series is named ``pipelinejobs_*`` and lives in the app's own registry.

- ``pipelinejobs_jobs{state,pipeline}``: visible jobs, from **counters the store keeps with every
  write that changes a job's state or visibility** (SQLite: triggers in the writing transaction;
  MongoDB: a counter document moved right after the job's own update). A scrape reads them (one
  small read, never a count of the jobs) unless it read them less than ``metrics.jobs_refresh_seconds``
  ago (1 s), so a scrape sees every writer's changes (reactor.py processes, other servers, the CLI)
  within about a second. serve *recounts* the jobs at start and every ``metrics.recount_seconds``
  (:func:`start_recounting`): jobs written by others (python-datacatalog) and a MongoDB writer that
  died between its two writes are taken in then. ``pipelinejobs_jobs_snapshot_age_seconds`` says how
  old the counts shown are.
- Message outcomes as ``Server.execute`` returns them: events accepted by name, refusals by
  kind, replayed deliveries, stale scheduler callbacks, and store errors
  (``storage_unavailable``, from messages and from read requests).
- Request latency: a histogram by method and route template (never the raw path, whose
  uuids would make a series per job), and a request counter that adds the status.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
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
from ..store.base import JobStore
from ..store.listing import Recount
from .http import JSONResponse, shown_path

log = logs.get_logger("server.metrics")
RECOUNT_RETRY_SECONDS = 5.0  # a recount the counters moved under is tried again this soon, a few times
RECOUNT_TRIES = 5
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class JobCounts:
    """Visible jobs per (state, pipeline) as the store's counters have them, read at most every ``interval``.

    A scrape that finds the last reading older than that reads again, in its own thread (the endpoint
    renders in the thread pool); scrapes that arrive meanwhile wait for that one reading. When the store
    does not answer (within 2 s) the last reading is shown and the store error counted.
    """

    def __init__(self, store: JobStore, interval: float, on_error: Any = None) -> None:
        self.store = store
        self.interval = interval
        self.on_error = on_error
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] | None = None
        self._taken = 0.0  # monotonic time of the reading shown
        self._duration = 0.0

    def snapshot(self) -> tuple[dict[tuple[str, str], int] | None, float, float]:
        """(counts, age in seconds, how long reading them took)."""
        with self._lock:
            if self._counts is None or time.monotonic() - self._taken >= self.interval:
                start = time.monotonic()
                try:
                    counts = self.store.job_counts()
                except PipelineJobsError as exc:
                    log.warning("job counts for /metrics not read (%s): %s", exc.kind.value, exc.message)
                    if self.on_error is not None:
                        self.on_error(exc)
                else:
                    finish = time.monotonic()
                    self._counts, self._taken, self._duration = counts, finish, finish - start
            age = time.monotonic() - self._taken if self._counts is not None else 0.0
            return self._counts, age, self._duration


class _JobsCollector:
    """Turns the counters into gauges at scrape time."""

    def __init__(self, counts: JobCounts) -> None:
        self.counts = counts

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        counts, age, duration = self.counts.snapshot()
        jobs = GaugeMetricFamily(
            "pipelinejobs_jobs",
            "Visible jobs by state and pipeline (counters kept with the writes)",
            labels=["state", "pipeline"],
        )
        for (state, pipeline), count in sorted((counts or {}).items()):
            jobs.add_metric([state, pipeline], max(count, 0))  # below 0 only until a recount: a job never counted
        yield jobs
        yield GaugeMetricFamily(
            "pipelinejobs_jobs_snapshot_age_seconds", "Age of the job counts shown by pipelinejobs_jobs", value=age
        )
        yield GaugeMetricFamily(
            "pipelinejobs_jobs_snapshot_duration_seconds", "How long reading the job counts took", value=duration
        )


def recount(
    store: JobStore,
    *,
    tries: int = RECOUNT_TRIES,
    pause: Callable[[float], Any] = time.sleep,
    settle: float | None = None,
) -> Recount:
    """Recount the visible jobs into the counters; a recount the counters moved under is tried again a few times.

    ``settle``: the store's wait between counting and setting (``recount_jobs``); None: its own default.
    """
    for attempt in range(tries):
        done = store.recount_jobs(settle=settle, wait=pause)
        if done.applied:
            if done.corrections:
                shown = ", ".join(f"{s}/{p} {n:+d}" for (s, p), n in sorted(done.corrections.items())[:10])
                log.warning("job counts recounted in %.2f s and corrected: %s", done.seconds, shown)
            else:
                log.info("job counts recounted in %.2f s: they were right", done.seconds)
            return done
        if attempt + 1 < tries and pause(RECOUNT_RETRY_SECONDS):
            return done  # serve is stopping
    log.warning("job counts not recounted: jobs kept changing during %d counts; next try in an interval", tries)
    return done


def start_recounting(store: JobStore, every: float) -> Callable[[], None]:
    """serve's recount: a daemon thread recounting at once, then every ``every`` seconds (0: only at once).

    Returns the function that stops it. A failed recount is logged and tried again at the next interval.
    """
    stopping = threading.Event()

    def loop() -> None:
        while not stopping.is_set():
            try:
                recount(store, pause=stopping.wait)
            except PipelineJobsError as exc:
                log.warning("job counts not recounted (%s): %s", exc.kind.value, exc.message)
            except Exception as exc:  # a bug must not end the loop silently
                log.error("job counts not recounted (%s)", type(exc).__name__, exc_info=exc)
            if every <= 0:
                return
            stopping.wait(every)

    thread = threading.Thread(target=loop, name="pipelinejobs-recount", daemon=True)
    thread.start()

    def stop() -> None:
        stopping.set()
        thread.join(timeout=30)

    return stop


class Metrics:
    """The app's metrics; ``observe`` is handed every message outcome by ``Server.execute``."""

    def __init__(self, store: JobStore, refresh_seconds: float = 1.0) -> None:
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
        self.counts = JobCounts(store, refresh_seconds, on_error=self.store_error)
        r.register(_JobsCollector(self.counts))
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # serve --workers: the counters of every worker
            self.registry = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(self.registry)
            self.registry.register(_JobsCollector(self.counts))

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


#: A longer request path is cut in the access log (a path is the client's to choose, up to the HTTP
#: parser's limits; every log line goes through the redactor), at a ``/`` so no segment shows in part.
MAX_LOGGED_PATH = 512
access_log = logs.get_logger("server")


def logged_path(path: str) -> str:
    """``path`` as the access log shows it: past ``MAX_LOGGED_PATH`` characters cut, saying so
    (``/a/b/...[cut: 70000 characters]``), then its credentials masked (``http.shown_path``)."""
    if len(path) > MAX_LOGGED_PATH:
        kept = path[: max(path.rfind("/", 0, MAX_LOGGED_PATH), 0)]
        path = f"{kept}/...[cut: {len(path)} characters]"
    return shown_path(path)


EXECUTION_NOTE = "pipelinejobs.execution"  # scope key: a message POST's execution id and exit code, for its line


class RequestObserver:
    """ASGI middleware, one pass per HTTP request: its access-log line, latency and status.

    The log line is method, path (``logged_path``: cut past 512 characters, no credential) and status,
    never the query string (it can carry an ``x-nonce``); a message POST adds its execution id and exit
    code. Metrics go by route template, read from the route Starlette matched.
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
            access_log.info(
                "%s %s %s%s",
                method,
                logged_path(scope.get("path", "")),
                code,
                f" ({scope[EXECUTION_NOTE]})" if EXECUTION_NOTE in scope else "",
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
    return metrics
