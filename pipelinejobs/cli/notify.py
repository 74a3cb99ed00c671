"""`pipelinejobs subscription add|list|remove|test|deliveries` and `pipelinejobs notify --drain`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from .. import egress
from ..errors import ErrorKind, PipelineJobsError
from ..notify import dispatcher, subscriptions
from ..store.base import JobStore
from .common import EXIT_CODES, emit, open_store, settings_of, when

#: where `subscription add --actor` reads the actor's credential when not given on the command line
NONCE_ENV = "PIPELINEJOBS_ACTOR_NONCE"
TOKEN_ENV = "PIPELINEJOBS_ACTOR_TOKEN"
#: where `subscription add --openlineage` reads the endpoint's API key when not given on the command line
API_KEY_ENV = "PIPELINEJOBS_OPENLINEAGE_API_KEY"


def cmd_subscription_add(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    nonce = args.nonce or (os.environ.get(NONCE_ENV) if args.actor else None)
    bearer = args.bearer or (os.environ.get(TOKEN_ENV) if args.actor and not nonce else None)
    api_key = args.api_key or (os.environ.get(API_KEY_ENV) if args.openlineage else None)
    with open_store(settings) as store:
        subscription = subscriptions.new_subscription(
            now=dispatcher.utc_now(),
            pipeline_uuid=args.pipeline,
            job_uuid=args.job,
            states=args.state,
            events=args.event,
            include_data=not args.no_data,
            description=args.description,
            url=args.url,
            actor=args.actor,
            api_server=args.api_server,
            nonce=nonce,
            bearer=bearer,
            tapis_token=args.tapis_token,
            openlineage=args.openlineage,
            namespace=args.namespace,
            dataset_namespace=args.dataset_namespace,
            api_key=api_key,
        )
        subscriptions.add_subscription(store, settings, subscription)
    shown = subscriptions.public_view(subscription, reveal_secret=True)
    lines = [f"subscription {subscription['id']} added: {_describe(shown)}"]
    if subscription.get("secret"):
        lines.append(f"signing secret (shown this once; keep it with the receiver): {subscription['secret']}")
    emit(args, shown, "\n".join(lines))
    return 0


def _describe(sub: dict[str, Any]) -> str:
    scope = f"pipeline {sub['pipeline_uuid']}" if sub.get("pipeline_uuid") else f"job {sub.get('job_uuid')}"
    only = []
    if sub.get("states"):
        only.append("states " + ",".join(sub["states"]))
    if sub.get("events"):
        only.append("events " + ",".join(sub["events"]))
    target = subscriptions.describe(sub)
    data = "" if sub.get("include_data", True) else ", without data"
    return f"{scope}{' (' + '; '.join(only) + ')' if only else ''} -> {target}{data}"


def cmd_subscription_list(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    with open_store(settings) as store:
        found = [subscriptions.public_view(s) for s in store.list_subscriptions()]
    lines = [f"{s['id']}  {_describe(s)}" for s in found] or ["no subscriptions"]
    emit(args, found, "\n".join(lines))
    return 0


def cmd_subscription_remove(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    with open_store(settings) as store:
        subscriptions.remove_subscription(store, args.id)
    emit(args, {"removed": args.id}, f"subscription {args.id} removed")
    return 0


def cmd_subscription_test(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    with open_store(settings) as store:
        subscription = store.find_subscription(args.id)
        if subscription is None:
            raise PipelineJobsError(ErrorKind.NOT_FOUND, f"no subscription {args.id[:64]}")
        result = dispatcher.send_test(store, settings, subscription, now=dispatcher.utc_now())
    said = f"HTTP {result['status']}" if result["status"] else "no answer"
    human = f"test {result['webhook_id']}: {result['outcome']} ({result['error'] or said})"
    emit(args, result, human)
    if result["ok"]:
        return 0
    refused = result["outcome"] == egress.REFUSED  # the subscription is what is wrong, not the receiver
    return EXIT_CODES[ErrorKind.BAD_MESSAGE if refused else ErrorKind.REMOTE_UNAVAILABLE]


def deliveries_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no deliveries"
    lines = []
    for row in rows:
        status = row.get("status") if row.get("status") is not None else "-"
        took = f"{row['duration_ms']:.0f} ms" if isinstance(row.get("duration_ms"), (int, float)) else "-"
        what = f"{row.get('event') or 'test'} r{row.get('revision')}" if row.get("event") else "test"
        error = f"  {row['error']}" if row.get("error") else ""
        lines.append(
            f"{when(row.get('at'))}  {row.get('outcome', '?'):<9}  #{row.get('attempt')}  {status!s:<4}  {took:>7}"
            f"  {row.get('subscription')}  {row.get('job_uuid') or '-'}  {what}  {row.get('webhook_id')}{error}"
        )
    return "\n".join(lines)


def cmd_subscription_deliveries(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    with open_store(settings) as store:
        rows = store.list_deliveries(job_uuid=args.job, subscription=args.subscription, limit=args.limit)
    emit(args, rows, deliveries_text(rows))
    return 0


def _drain_once(args: argparse.Namespace, settings: Any) -> None:
    with open_store(settings) as store:
        running = dispatcher.Dispatcher(store, settings)
        try:
            report = running.drain()
        finally:
            running.close()
    data = report.as_dict()
    human = ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in data.items())
    emit(args, data, human)
    sys.stdout.flush()


def cmd_notify(args: argparse.Namespace) -> int:
    """Deliver what is due (for deployments without serve): one drain, or one every N seconds."""
    from .. import watch

    if not args.drain:
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, "say --drain (deliver everything due now)")
    settings = settings_of(args)
    if not args.every:
        _drain_once(args, settings)
        return 0
    watch.run_every(args.every, lambda: _drain_once(args, settings))
    return 0


def job_deliveries(store: JobStore, uuid: str, limit: int = 20) -> list[dict[str, Any]]:
    """A job's latest delivery attempts, for `job show`."""
    return store.list_deliveries(job_uuid=uuid, limit=limit)


def add_commands(commands: Any, leaf: Callable[..., Any]) -> None:
    group = commands.add_parser("subscription", help="notify webhooks, actors and OpenLineage of job events")
    subs = group.add_subparsers(metavar="ACTION")
    what = "subscribe a webhook, an actor or OpenLineage to a pipeline's or a job's events"
    sub = leaf(subs, "add", cmd_subscription_add, what)
    scope = sub.add_mutually_exclusive_group(required=True)
    scope.add_argument("--pipeline", help="every job of this pipeline uuid")
    scope.add_argument("--job", help="this job uuid only")
    target = sub.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a webhook URL (POSTed JSON, signed the Standard Webhooks way)")
    target.add_argument("--actor", help="an Abaco/Tapis actor: its messages URL, or its id with --api-server")
    target.add_argument(
        "--openlineage", help="an OpenLineage endpoint (a RunEvent per state change); a bare host gets /api/v1/lineage"
    )
    sub.add_argument("--state", action="append", default=[], help="only events leading to this state (repeatable)")
    sub.add_argument("--event", action="append", default=[], help="only this event name, e.g. finish (repeatable)")
    sub.add_argument("--no-data", action="store_true", help="leave the event's data out of the notification")
    sub.add_argument("--api-server", help="tenant base URL, when --actor is an id")
    sub.add_argument("--nonce", help=f"the actor's nonce (default: ${NONCE_ENV}, kept out of `ps`)")
    sub.add_argument("--bearer", help=f"a bearer token for the actor (default: ${TOKEN_ENV})")
    sub.add_argument("--tapis-token", help="a Tapis v3 token for the actor (X-Tapis-Token)")
    sub.add_argument("--namespace", help="OpenLineage: the job namespace (default: pipelinejobs)")
    sub.add_argument("--dataset-namespace", help="OpenLineage: the archive's dataset namespace (default: --namespace)")
    sub.add_argument("--api-key", help=f"OpenLineage: the endpoint's API key (default: ${API_KEY_ENV})")
    sub.add_argument("--description", default="", help="a note for people")
    leaf(subs, "list", cmd_subscription_list, "list subscriptions (secrets masked)")
    sub = leaf(subs, "remove", cmd_subscription_remove, "remove a subscription (pending notifications are dropped)")
    sub.add_argument("id")
    sub = leaf(subs, "test", cmd_subscription_test, "send a sample notification now")
    sub.add_argument("id")
    sub = leaf(subs, "deliveries", cmd_subscription_deliveries, "delivery attempts, newest first")
    sub.add_argument("--job", help="only this job's")
    sub.add_argument("--subscription", help="only this subscription's")
    sub.add_argument("--limit", type=int, default=50)
    sub = leaf(commands, "notify", cmd_notify, "deliver due notifications (for deployments without serve)")
    sub.add_argument("--drain", action="store_true", help="deliver everything due now, then stop")
    sub.add_argument("--every", type=float, default=0, help="with --drain: drain every N seconds until interrupted")
