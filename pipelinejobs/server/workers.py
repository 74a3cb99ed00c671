"""`pipelinejobs serve --workers N`: N processes answer on one port.

One Python process spends most of a message's CPU in the interpreter (HTTP parsing, checks,
the response), so a single serve uses one core however many it has. With ``--workers N``
the command binds the socket and opens the store once (to check the configuration and make
the indexes, so a bad setting is a clear error before any worker starts), then uvicorn's
supervisor starts N worker processes on that socket and restarts any that dies. On Linux each
worker also listens on a socket of its own on the same port (``WorkerListener``), so the kernel
spreads new connections over the workers. The supervisor itself runs the background loops (the
watchdog), so they run once, not N times.

What a worker needs reaches it through its environment: ``PIPELINEJOBS_SERVE_WORKER``
(JSON: the config file, the actor ids, the API server URL) and ``PIPELINEJOBS_API_TOKENS``
(the accepted tokens, never on a command line). Metrics are collected across the workers
with prometheus-client's multiprocess mode (a temporary ``PROMETHEUS_MULTIPROC_DIR``).

Consequences to know: each worker writes its execution records behind (``recorder.py``),
so ``GET .../executions/{id}`` answered by another worker than the POST's sees the record
once it is flushed (every 50 ms). Jobs, events and nonces are in the store and seen at once.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

from starlette.applications import Starlette

from .. import logs
from ..notify import wake as notify_wake
from ..settings import Settings, load_settings, words
from .app import create_app, start_background
from .execution import Server, open_server, serve_config
from .sessions import SESSION_KEY_ENV

log = logs.get_logger("server.workers")

SPEC_ENV = "PIPELINEJOBS_SERVE_WORKER"
API_TOKENS_ENV = "PIPELINEJOBS_API_TOKENS"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's multiprocess mode


def configure_logging(settings: Settings, plain_tokens: tuple[str, ...]) -> logs.RedactingFormatter:
    """serve's logs (its own and uvicorn's start-up errors) through the one redacting handler."""
    formatter = logs.configure(secrets=[*settings.secrets, *plain_tokens])
    logs.set_level(settings.section("logs").get("level"))
    uvicorn_log = logging.getLogger("uvicorn")
    uvicorn_log.handlers[:] = list(logging.getLogger(logs.LOGGER_NAME).handlers)
    uvicorn_log.setLevel(logging.WARNING)
    uvicorn_log.propagate = False
    return formatter


def worker_app() -> Starlette:
    """The app of one worker process (uvicorn calls this factory in each worker it starts)."""
    spec = json.loads(os.environ[SPEC_ENV])
    settings = load_settings(os.environ, Path(spec["config"]) if spec.get("config") else None)
    config, plain = serve_config(
        settings,
        actors=spec["actors"],
        api_tokens=words(os.environ.get(API_TOKENS_ENV)),
        api_server=spec.get("api_server"),
    )
    configure_logging(settings, plain)
    return create_app(open_server(settings, config, plain), background=False)


def can_spread() -> bool:
    """Whether each worker can have a listening socket of its own on the port (Linux's SO_REUSEPORT)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


class WorkerListener:
    """Becomes, in each worker process, a listening socket of the worker's own on the supervisor's address.

    All workers also serve the supervisor's socket, which holds the port and queues connections while
    workers start or restart. On that shared socket, whichever worker wakes first accepts every
    connection waiting: a few keep-alive clients (a proxy's pool, a benchmark's 8 clients) mostly landed
    all on one worker while the other idled, measured at two thirds of a 4/4 split's events/s. The kernel
    hashes each new connection to one of the sockets of a ``SO_REUSEPORT`` group, so with a socket per
    worker most land spread out. uvicorn hands its workers their sockets by pickling them; this object
    pickles into a new socket, made in the worker as it starts.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.family, self.address = sock.family, sock.getsockname()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (shared_listener, (self.family, self.address))


def shared_listener(family: int, address: Any) -> socket.socket:
    """A listening socket on ``address`` that other ``SO_REUSEPORT`` sockets of this user may join:
    the supervisor's (``cli._listen``) and each worker's (``WorkerListener``)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def run_workers(
    server: Server,
    sock: socket.socket,
    workers: int,
    *,
    config_path: str | None,
    plain_tokens: tuple[str, ...],
    uvicorn_options: dict[str, Any],
) -> None:
    """Supervise ``workers`` processes serving on ``sock``; run the background loops here until stopped."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    spec = {"config": config_path, "actors": list(server.config.actors), "api_server": server.config.api_server}
    os.environ[SPEC_ENV] = json.dumps(spec)
    os.environ[API_TOKENS_ENV] = ",".join(plain_tokens)
    os.environ.setdefault(SESSION_KEY_ENV, secrets.token_hex(32))  # web view cookies hold in every worker
    metrics_dir = tempfile.mkdtemp(prefix="pipelinejobs-metrics-")
    os.environ[METRICS_DIR_ENV] = metrics_dir
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        "pipelinejobs.server.workers:worker_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        lifespan="on",
        **uvicorn_options,
    )
    wake: notify_wake.WakeSocket | None = None
    try:  # the workers' outbox items wake the dispatcher, which runs here
        wake = notify_wake.WakeSocket()
        os.environ[notify_wake.WAKE_SOCKET_ENV] = wake.path
    except OSError as exc:  # no Unix sockets here: the dispatcher's poll finds the items
        log.warning("notifications wait for the dispatcher's poll: no wake-up socket (%s)", exc)
    stop_background = start_background(server)
    if wake is not None:
        wake.listen(server.store)
    try:
        spread = sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) if can_spread() else 0
        sockets = [sock, WorkerListener(sock)] if spread else [sock]
        Multiprocess(config, sockets=cast(list[socket.socket], sockets)).run()
    finally:
        stop_background()
        if wake is not None:
            wake.close()
        server.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
