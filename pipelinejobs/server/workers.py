"""`pipelinejobs serve --workers N`: N processes answer on one listening socket.

One Python process spends most of a message's CPU in the interpreter (HTTP parsing, checks,
the response), so a single serve uses one core however many it has. With ``--workers N``
the command binds the socket and opens the store once (to check the configuration and make
the indexes, so a bad setting is a clear error before any worker starts), then uvicorn's
supervisor starts N worker processes on that socket and restarts any that dies. The
supervisor itself runs the background loops (the watchdog), so they run once, not N times.

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
import tempfile
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from .. import logs
from ..settings import Settings, load_settings
from .app import create_app, start_background
from .execution import Server, open_server, serve_config
from .registry import words
from .ui import SESSION_KEY_ENV

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
    stop_background = start_background(server)
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        stop_background()
        server.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
