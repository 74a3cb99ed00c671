"""`pipelinejobs send`: a message to an actor (Abaco, Tapis or `pipelinejobs serve`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from .. import logs
from ..errors import ErrorKind, PipelineJobsError
from .common import API_TOKENS_ENV, BEARER_ENV, EXIT_CODES, emit, read_json


def cmd_send(args: argparse.Namespace) -> int:
    try:
        from ..abaco import send_message
    except ImportError as exc:
        raise PipelineJobsError(ErrorKind.CONFIGURATION, "`send` needs pipelinejobs.abaco, which is missing") from exc
    message = read_json(args.message, "the message")
    params: dict[str, str] = {}
    for pair in args.param:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise PipelineJobsError(ErrorKind.BAD_MESSAGE, f"--param takes NAME=VALUE, not {pair!r}")
        params[name] = value
    bearer = args.bearer or os.environ.get(BEARER_ENV) or _first_serve_token() or None
    logs.add_secrets([s for s in (bearer, args.tapis_token, args.nonce, params.get("token")) if s])
    response = send_message(
        args.actor,
        message,
        params or None,
        api_server=args.api_server,
        bearer=bearer,
        tapis_token=args.tapis_token,
        nonce=args.nonce,
        synchronous=args.sync,
    )
    if args.sync:
        kind = ErrorKind.from_value(response.get("kind"))
        if response.get("status") == "error" and kind is not None:  # the manager refused it
            emit(args, response, json.dumps(response, indent=2, default=str))
            print(f"pipelinejobs: the actor refused the message: {response.get('message')}", file=sys.stderr)
            return EXIT_CODES[kind]
        human = json.dumps(response, indent=2, default=str)
    else:
        result = response.get("result") if isinstance(response, dict) else None
        execution = (result or {}).get("executionId") or (result or {}).get("execution_id")
        if execution:
            from ..abaco import messages_url

            base = messages_url(args.actor, args.api_server).split("?", 1)[0].removesuffix("/messages")
            human = (
                f"sent; execution {execution} (queued: the actor has not answered yet)\n"
                f"its result: GET {base}/executions/{execution} (and .../logs), or send again with --sync to wait"
            )
        else:
            human = json.dumps(response, default=str)
    emit(args, response, human)
    return 0


def _first_serve_token() -> str | None:
    """The first of serve's ``PIPELINEJOBS_API_TOKENS``, so one variable serves both sides on one machine."""
    from ..settings import words

    tokens = words(os.environ.get(API_TOKENS_ENV))
    return tokens[0] if tokens else None


def add_commands(commands: Any, leaf: Callable[..., Any]) -> None:
    sub = leaf(commands, "send", cmd_send, "send a message to an actor (Abaco or `pipelinejobs serve`)")
    sub.add_argument("actor", help="the actor's messages URL, or its id with --api-server")
    sub.add_argument("message", help="the message: JSON, @file or - for stdin")
    sub.add_argument("--api-server", help="tenant base URL, e.g. https://api.sd2e.org")
    sub.add_argument("--bearer", help=f"bearer token (default: ${BEARER_ENV}, else the first of ${API_TOKENS_ENV})")
    sub.add_argument("--tapis-token", help="Tapis v3 token, sent as X-Tapis-Token")
    sub.add_argument("--nonce", help="send with ?x-nonce=... instead of a bearer token")
    sub.add_argument("--param", action="append", default=[], help="URL parameter NAME=VALUE (repeatable)")
    sub.add_argument("--sync", action="store_true", help="wait for the result (_abaco_synchronous=true)")
