"""`pipelinejobs nonce create|list|delete`: the nonces `pipelinejobs serve` accepts for its actors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..errors import ErrorKind, PipelineJobsError
from ..settings import Settings
from .common import emit, open_store, settings_of


def _with_registry(args: argparse.Namespace, work: Callable[[Any, Settings], int]) -> int:
    from ..settings import words
    from ..store.factory import open_registry

    settings = settings_of(args)
    known = words(settings.section("serve").get("actors"))
    if known and args.actor not in known:
        raise PipelineJobsError(
            ErrorKind.NOT_FOUND, f"actor {args.actor} is not one of serve.actors ({', '.join(known)})"
        )
    store = open_store(settings)
    try:
        registry = open_registry(settings, store)
        try:
            code = work(registry, settings)
        finally:
            registry.close()
    finally:
        store.close()
    if not known and args.run is cmd_nonce_create:
        print(
            f"pipelinejobs: note: serve.actors is not set, so actor {args.actor} could not be checked; "
            f"this nonce works only with `pipelinejobs serve --actor {args.actor}` "
            "(set serve.actors or _REACTOR_SERVE_ACTORS to have unknown actors refused)",
            file=sys.stderr,
        )
    return code


def _refused(exc: Exception) -> PipelineJobsError:
    return PipelineJobsError(ErrorKind.BAD_MESSAGE, str(exc))


def cmd_nonce_create(args: argparse.Namespace) -> int:
    from ..server.abaco_records import Refused, new_nonce, nonce_tenant

    def work(registry: Any, settings: Settings) -> int:
        try:
            nonce = new_nonce(
                actor_id=args.actor,
                owner=settings.identity.owner,
                tenant=nonce_tenant(settings),
                now=datetime.now(timezone.utc),
                max_uses=args.max_uses,
                level=args.level,
                description=args.description,
            )
        except Refused as exc:
            raise _refused(exc) from exc
        registry.create_nonce(nonce)
        uses = "unlimited uses" if nonce["maxUses"] == -1 else f"{nonce['maxUses']} use(s)"
        human = (
            f"nonce {nonce['id']} for actor {args.actor}: level {nonce['level']}, {uses}\n"
            f"use it as ...?x-nonce={nonce['id']} on the actor's messages URL"
        )
        emit(args, nonce, human)
        return 0

    return _with_registry(args, work)


def cmd_nonce_list(args: argparse.Namespace) -> int:
    def work(registry: Any, settings: Settings) -> int:
        nonces = registry.list_nonces(args.actor)
        rows = [f"{'ID':<24}  {'LEVEL':<8}  {'USED':>5}  {'LEFT':>5}  DESCRIPTION"]
        rows += [
            f"{n['id']:<24}  {n['level']:<8}  {n['currentUses']:>5}  "
            f"{'inf' if n['remainingUses'] == -1 else n['remainingUses']:>5}  {n.get('description') or ''}"
            for n in nonces
        ]
        emit(args, nonces, "\n".join(rows) if nonces else f"no nonces for actor {args.actor}")
        return 0

    return _with_registry(args, work)


def cmd_nonce_delete(args: argparse.Namespace) -> int:
    def work(registry: Any, settings: Settings) -> int:
        if not registry.delete_nonce(args.actor, args.nonce_id):
            raise PipelineJobsError(ErrorKind.NOT_FOUND, f"no such nonce for actor {args.actor}")
        emit(args, {"deleted": True}, "nonce deleted")
        return 0

    return _with_registry(args, work)


def add_commands(commands: Any, leaf: Callable[..., Any]) -> None:
    nonce = commands.add_parser("nonce", help="manage the nonces `serve` accepts").add_subparsers(metavar="ACTION")
    sub = leaf(nonce, "create", cmd_nonce_create, "create a nonce for an actor")
    sub.add_argument("--actor", required=True)
    sub.add_argument("--max-uses", type=int, default=-1, help="-1 (default) for unlimited")
    sub.add_argument("--level", default="EXECUTE", choices=["READ", "EXECUTE", "UPDATE"])
    sub.add_argument("--description", default="")
    sub = leaf(nonce, "list", cmd_nonce_list, "list an actor's nonces")
    sub.add_argument("--actor", required=True)
    sub = leaf(nonce, "delete", cmd_nonce_delete, "delete a nonce")
    sub.add_argument("--actor", required=True)
    sub.add_argument("nonce_id")
