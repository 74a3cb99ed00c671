"""`pipelinejobs serve`: Abaco's messages API, the read API, the web view and metrics, over HTTP."""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ErrorKind, PipelineJobsError
from ..settings import Settings, load_settings, words
from ..settings_schema import unknown_variables
from .common import API_TOKENS_ENV, WAIT_NOTICE_SECONDS, log


def _listen(host: str, port: int, *, workers: int = 1) -> Any:
    """Bind the listening socket before anything says "listening": a busy port is a clear error, not exit 3.

    With several workers the socket allows each worker a listening socket of its own on the same port
    (``SO_REUSEPORT``, see ``server.workers.WorkerListener``). A first bind without that option checks that
    nothing listens there yet: with it, a second serve on the port would silently share the traffic.
    """
    import socket

    from ..server.workers import can_spread, shared_listener

    spread = workers > 1 and can_spread()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise PipelineJobsError(ErrorKind.CONFIGURATION, f"cannot listen on {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if spread:  # the port is free (and chosen, for port 0): bind again, open to the workers' sockets
            address = sock.getsockname()
            sock.close()
            sock = shared_listener(family, address)
        else:
            sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise PipelineJobsError(
            ErrorKind.CONFIGURATION,
            f"cannot listen on {host}:{port}: {reason} (is another server on that port? choose one with --port)",
        ) from exc
    sock.set_inheritable(True)
    return sock


def _start_wait_notice(settings: Settings) -> threading.Timer | None:
    """Serve prepares the store before it answers: say so if a MongoDB keeps it waiting."""
    uri = settings.mongodb_uri
    if uri is None:
        return None
    from ..store.mongo import hosts_of

    timer = threading.Timer(
        WAIT_NOTICE_SECONDS,
        log.warning,
        (
            "waiting up to %.1f s for MongoDB at %s (mongodb.server_selection_timeout_ms)...",
            settings.mongodb_timeout_ms / 1000,
            hosts_of(uri.reveal()),
        ),
    )
    timer.daemon = True
    timer.start()
    return timer


def _tls_files(args: argparse.Namespace, section: dict[str, Any]) -> tuple[str, str] | None:
    """The certificate and key for HTTPS, checked here so a bad pair is a clear error before serving."""
    import ssl

    cert = args.tls_cert or section.get("tls_cert") or None
    key = args.tls_key or section.get("tls_key") or None
    if not cert and not key:
        return None
    if not (cert and key):
        raise PipelineJobsError(ErrorKind.CONFIGURATION, "HTTPS needs both --tls-cert and --tls-key")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise PipelineJobsError(
            ErrorKind.CONFIGURATION, f"cannot use the TLS certificate {cert} with key {key}: {reason}"
        ) from exc
    return str(cert), str(key)


def _needs_api_server(host: str, api_server: str | None) -> None:
    """Beyond loopback, links must name the address clients use: a request's Host header never does."""
    if api_server or _is_loopback(host):
        return
    raise PipelineJobsError(
        ErrorKind.CONFIGURATION,
        f"serve listens on {host}, beyond this machine: give the base URL clients use with --api-server"
        " (or serve.api_server), e.g. https://jobs.example.org; the links serve stores are built from it",
    )


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _own_address(host: str, port: int, tls: bool) -> str:
    """The default ``api_server``: the loopback address serve listens on."""
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def _workers(args: argparse.Namespace, settings: Settings) -> int:
    """``--workers``, else ``serve.workers`` (typed at load): how many processes answer (default 1)."""
    if args.workers is None:
        return int(settings.value("serve", "workers"))
    if args.workers < 1:
        raise PipelineJobsError(ErrorKind.CONFIGURATION, f"--workers must be a whole number >= 1, not {args.workers}")
    return int(args.workers)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..server.app import create_app
    from ..server.connections import connection_limits, uvicorn_options
    from ..server.execution import DEFAULT_ACTOR, describe, open_server, serve_config
    from ..server.workers import configure_logging, run_workers

    settings = load_settings(os.environ, Path(args.config) if args.config else None)
    env_tokens = words(os.environ.get(API_TOKENS_ENV))
    config, plain = serve_config(
        settings, actors=args.actor, api_tokens=[*args.api_token, *env_tokens], api_server=args.api_server
    )
    formatter = configure_logging(settings, plain)
    section = settings.section("serve")
    host = args.host or str(settings.value("serve", "host"))
    port = args.port or int(settings.value("serve", "port"))
    workers = _workers(args, settings)
    tls = _tls_files(args, section)
    limits = connection_limits(settings)
    _needs_api_server(host, config.api_server)
    sock = _listen(host, port, workers=workers)
    bound_port = sock.getsockname()[1]
    if not config.api_server:
        config = replace(config, api_server=_own_address(host, bound_port, tls is not None))
    waiting = _start_wait_notice(settings)
    try:
        server = open_server(settings, config, plain)
    except BaseException:
        sock.close()
        raise
    finally:
        if waiting is not None:
            waiting.cancel()
    formatter.add_secrets(plain)
    for name in unknown_variables(os.environ, settings.origins):
        log.warning("%s is not a setting: ignored (`pipelinejobs config show` lists them)", name)
    if not len(config.api_tokens):
        log.warning("no API tokens configured: only nonces (made with `pipelinejobs nonce create`) are accepted")
    defaulted = config.actors == (DEFAULT_ACTOR,) and not words(args.actor) and not settings.value("serve", "actors")
    log.info(
        "pipelinejobs serve %s listening on %s://%s:%s for actor(s) %s%s "
        "(POST /actors/v2/{id}/messages and /v3/actors/{id}/messages); links name %s; store: %s; "
        "%d API token(s) accepted",
        __version__,
        "https" if tls else "http",
        host,
        bound_port,
        ", ".join(config.actors),
        " (the default: no --actor or serve.actors given)" if defaulted else "",
        config.api_server,
        describe(server),
        len(config.api_tokens),
    )
    options: dict[str, Any] = {"ssl_certfile": tls[0], "ssl_keyfile": tls[1]} if tls else {}
    options.update(uvicorn_options(limits))
    if workers > 1:
        log.info("%d worker processes; this one supervises them and runs the background loops", workers)
        try:
            run_workers(server, sock, workers, config_path=args.config, plain_tokens=plain, uvicorn_options=options)
        finally:
            sock.close()
        return 0
    uv_config = uvicorn.Config(
        create_app(server), host=host, port=bound_port, log_config=None, access_log=False, lifespan="on", **options
    )
    try:
        uvicorn.Server(uv_config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def add_commands(commands: Any, leaf: Callable[..., Any]) -> None:
    sub = leaf(commands, "serve", cmd_serve, "serve Abaco's messages API for the configured actors")
    sub.add_argument("--host", help="interface to listen on (default: serve.host or 127.0.0.1)")
    sub.add_argument("--port", type=int, help="port (default: serve.port or 8000)")
    sub.add_argument("--actor", action="append", default=[], help="actor id to answer for (repeatable)")
    sub.add_argument(
        "--api-token", action="append", default=[], help=f"accepted bearer token (repeatable; or ${API_TOKENS_ENV})"
    )
    sub.add_argument(
        "--api-server",
        help="base URL clients use, for _links, job agent/task links and _abaco_api_server"
        " (default: serve.api_server, else the loopback address serve listens on; required beyond loopback)",
    )
    sub.add_argument("--tls-cert", help="PEM certificate (chain) to serve HTTPS with (default: serve.tls_cert)")
    sub.add_argument("--tls-key", help="PEM private key of --tls-cert (default: serve.tls_key)")
    sub.add_argument(
        "--workers", type=int, help="processes answering on the port (default: serve.workers or 1; one per core)"
    )
