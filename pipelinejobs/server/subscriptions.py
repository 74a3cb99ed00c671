"""Serve's notification API: subscriptions and their delivery records.

``POST /subscriptions`` (a JSON object: ``pipeline`` or ``job``; ``url`` (a webhook), ``actor``
with ``nonce``/``bearer``/``tapis_token`` and ``api_server``, or ``openlineage`` with ``namespace``,
``dataset_namespace`` and ``api_key``; optional ``states``, ``events``, ``include_data``,
``description``) answers the subscription with a webhook's signing secret, the only time it is
shown; ``GET /subscriptions`` lists them masked; ``DELETE /subscriptions/{id}``;
``POST /subscriptions/{id}/test`` sends a signed sample ("delivered", "refused by policy" or
"failed"); ``GET /subscriptions/{id}/deliveries`` and ``GET /jobs/{uuid}/deliveries`` show the
attempts, newest first. Destinations pass the outbound policy (``pipelinejobs.egress``) when a
subscription is made and at every send.

Only a holder of one of serve's API tokens may use them: a subscription can send a job's
data anywhere, so an actor's nonce (which a job's owner may hold) is not enough.
Routes stay thin: parse, call ``pipelinejobs.notify``'s modules, render.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import egress, queries
from ..errors import PipelineJobsError
from ..notify import dispatcher, subscriptions
from ..sinks.registry import SINKS
from .abaco_records import Refused
from .auth import authorize_operator
from .http import read_body, server_of, status_of
from .read import answer as _json_answer

Handler = Callable[[Request], Awaitable[Response]]

#: the fields every subscription takes; the others are its sink's (``pipelinejobs.sinks``)
_COMMON = {"pipeline", "job", "states", "events", "include_data", "description"}
_FIELDS = _COMMON | {name for sink in SINKS.values() for name in (sink.selector, *sink.options)}


def _answer(request: Request, result: Any, message: str) -> Response:
    return _json_answer(request, queries.jsonable(result), message)


def _authorized(handler: Handler) -> Handler:
    """Bearer API tokens only; a store or validation error becomes a 400/404/503 without secrets."""

    async def endpoint(request: Request) -> Response:
        authorize_operator(request)
        try:
            return await handler(request)
        except queries.QueryError as exc:
            raise Refused(str(exc), 400) from None
        except PipelineJobsError as exc:
            if status_of(exc.kind) < 500:  # the caller's mistake: said in Abaco's envelope, without secrets
                raise Refused(exc.message, status_of(exc.kind)) from None
            raise

    return endpoint


def _names(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise Refused(f"'{what}' must be a list of names or a comma-separated string.")


async def create_subscription(request: Request) -> Response:
    server = server_of(request)
    raw = await read_body(request, 65536)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise Refused("The request body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise Refused("The request body must be a JSON object.")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise Refused(f"Unknown field(s): {', '.join(str(u)[:40] for u in unknown[:5])}.")
    for name in _FIELDS - {"states", "events", "include_data"}:
        if body.get(name) is not None and not isinstance(body[name], str):
            raise Refused(f"'{name}' must be a string.")
    if "include_data" in body and not isinstance(body["include_data"], bool):
        raise Refused("'include_data' must be true or false.")
    target = {name: body.get(name) for name in _FIELDS - _COMMON}
    subscription = subscriptions.new_subscription(
        now=server.clock(),
        pipeline_uuid=body.get("pipeline"),
        job_uuid=body.get("job"),
        states=_names(body.get("states"), "states"),
        events=_names(body.get("events"), "events"),
        include_data=body.get("include_data", True),
        description=body.get("description") or "",
        **target,
    )
    await run_in_threadpool(subscriptions.add_subscription, server.store, server.settings, subscription)
    shown = subscriptions.public_view(subscription, reveal_secret=True)
    return _answer(request, shown, "Subscription created; its secret is shown this once.")


async def list_subscriptions(request: Request) -> Response:
    store = server_of(request).store
    found = await run_in_threadpool(store.list_subscriptions)
    return _answer(request, [subscriptions.public_view(s) for s in found], "Subscriptions retrieved successfully.")


async def _subscription(request: Request) -> dict[str, Any]:
    store = server_of(request).store
    subscription_id = request.path_params["id"]
    found = await run_in_threadpool(store.find_subscription, subscription_id)
    if found is None:
        raise Refused(f"No subscription found with identifier '{subscription_id[:64]}'.", 404)
    return found


async def delete_subscription(request: Request) -> Response:
    server = server_of(request)
    await run_in_threadpool(subscriptions.remove_subscription, server.store, request.path_params["id"])
    return _answer(request, None, "Subscription deleted successfully.")


async def test_subscription(request: Request) -> Response:
    server = server_of(request)
    subscription = await _subscription(request)
    result = await run_in_threadpool(
        lambda: dispatcher.send_test(server.store, server.settings, subscription, now=server.clock())
    )
    said = {"delivered": "Test notification sent.", egress.REFUSED: "Test notification refused by policy."}
    return _answer(request, result, said.get(result["outcome"], "Test notification failed."))


async def subscription_deliveries(request: Request) -> Response:
    store = server_of(request).store
    subscription = await _subscription(request)
    limit = queries.parse_limit(request.query_params.get("limit"), default=100, maximum=1000)
    rows = await run_in_threadpool(lambda: store.list_deliveries(subscription=subscription["id"], limit=limit))
    return _answer(request, rows, "Deliveries retrieved successfully.")


async def job_deliveries(request: Request) -> Response:
    store = server_of(request).store
    limit = queries.parse_limit(request.query_params.get("limit"), default=100, maximum=1000)
    uuid = request.path_params["uuid"]
    rows = await run_in_threadpool(lambda: store.list_deliveries(job_uuid=uuid, limit=limit))
    return _answer(request, rows, "Deliveries retrieved successfully.")


def subscription_routes() -> list[Route]:
    table: list[tuple[str, Handler, list[str]]] = [
        ("/subscriptions", create_subscription, ["POST"]),
        ("/subscriptions", list_subscriptions, ["GET"]),
        ("/subscriptions/{id}", delete_subscription, ["DELETE"]),
        ("/subscriptions/{id}/test", test_subscription, ["POST"]),
        ("/subscriptions/{id}/deliveries", subscription_deliveries, ["GET"]),
        ("/jobs/{uuid}/deliveries", job_deliveries, ["GET"]),
    ]
    return [
        Route(prefix + path, _authorized(handler), methods=methods)
        for prefix in ("", "/v3")
        for path, handler, methods in table
    ]
