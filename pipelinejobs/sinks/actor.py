"""The actor sink: the notification as a message to an Abaco/Tapis actor, so a pipeline's next step starts.

Sent by ``abaco.send_message`` (as every message the package sends) over the dispatcher's pooled
client, with the actor's nonce, bearer token or Tapis token, and no retries of its own: the
outbox retries, with its backoff and records. An accepted message is delivered; anything else,
a refused credential included (it may be renewed), is retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..egress import Refused
from ..errors import PipelineJobsError
from ..notify.notification import notification_body
from ..store.records import Document
from .base import MAX_ERROR_CHARS, Attempt, Delivery, Outcome, Sink, bad, checked_url, shown_url

if TYPE_CHECKING:
    from .http import Clients

CREDENTIALS = ("nonce", "bearer", "tapis_token")


class ActorSink(Sink):
    kind = "actor"
    selector = "actor"
    options = ("api_server", *CREDENTIALS)
    secret_fields = CREDENTIALS
    url_fields = ("actor", "api_server")
    label = "actor"

    def fields(self, given: Mapping[str, Any]) -> Document:
        actor, api_server = given.get("actor"), given.get("api_server")
        if not isinstance(actor, str) or not actor or len(actor) > 2048:
            raise bad("actor must be an actor id or its messages URL")
        is_url = actor.startswith(("http://", "https://"))
        if not is_url and not api_server:
            raise bad("actor is an id: api_server (the tenant's base URL) is needed to reach it")
        if is_url:
            checked_url(actor, "actor")
        if api_server:
            checked_url(api_server, "api_server")
        given_credentials = {name: given[name] for name in CREDENTIALS if given.get(name)}
        if not given_credentials:
            raise bad("an actor subscription needs the actor's nonce, bearer token or Tapis token")
        if any(not isinstance(v, str) or len(v) > 4096 for v in given_credentials.values()):
            raise bad("a nonce or token must be text")
        return {"actor": actor, "api_server": api_server or None, **given_credentials}

    def destination(self, subscription: Document) -> str:
        actor = str(subscription.get("actor") or "")
        return shown_url(actor) if actor.startswith(("http://", "https://")) else actor

    def deliver(self, delivery: Delivery, http: Clients) -> Attempt:
        from ..abaco import send_message

        sub = delivery.subscription
        body = notification_body(sub, delivery.record, delivery.pipeline_uuid, delivery.msg_id, test=delivery.test)
        try:
            with http.deadline():
                send_message(
                    str(sub["actor"]),
                    body,
                    api_server=sub.get("api_server"),
                    nonce=sub.get("nonce"),
                    bearer=sub.get("bearer"),
                    tapis_token=sub.get("tapis_token"),
                    timeout=http.timeout,
                    retries=0,  # the outbox retries, with its own backoff and records
                    client=http.client(),
                )
        except Refused:
            raise
        except PipelineJobsError as exc:
            return Attempt(Outcome.RETRY, getattr(exc, "status_code", None), exc.message[:MAX_ERROR_CHARS])
        return Attempt(Outcome.DELIVERED, 200)


SINK = ActorSink()
