"""The webhook sink: an HTTP POST of the notification as JSON, signed the Standard Webhooks way.

Every POST also carries the CloudEvents 1.0 HTTP binding's binary-mode headers, so a Knative
broker (or any CloudEvents receiver) takes it as an event while the body stays exactly what was
signed: ``ce-specversion: 1.0``, ``ce-id`` (= ``webhook-id``, the same on every retry: receivers
deduplicate on ``ce-source`` + ``ce-id``), ``ce-source`` (``/pipelinejobs/jobs/<uuid>``), ``ce-type``
(the body's ``type``) and ``ce-time`` (the event's time). ``Content-Type`` stands for the event's
``datacontenttype``. Any 2xx is delivered; anything else, including a timeout, is retried.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..notify.notification import encode, notification_body
from ..notify.signing import new_secret, signed_headers
from ..store.records import Document
from .base import Attempt, Delivery, Outcome, Sink, checked_url, failure_name, judged, shown_url

if TYPE_CHECKING:
    from .http import Clients


def cloudevents_headers(body: Mapping[str, Any]) -> dict[str, str]:
    """The CloudEvents binary-mode attributes of a notification (values are plain ASCII: no percent-encoding)."""
    source = f"/pipelinejobs/jobs/{body['job_uuid']}" if body.get("job_uuid") else "/pipelinejobs/subscriptions"
    return {
        "ce-specversion": "1.0",
        "ce-id": str(body["id"]),
        "ce-source": source,
        "ce-type": str(body["type"]),
        "ce-time": str(body["time"]),
    }


class WebhookSink(Sink):
    kind = "webhook"
    selector = "url"
    secret_fields = ("secret",)
    url_fields = ("url",)
    label = "webhook"

    def fields(self, given: Mapping[str, Any]) -> Document:
        return {"url": checked_url(given.get("url"), "url"), "secret": new_secret()}

    def deliver(self, delivery: Delivery, http: Clients) -> Attempt:
        import httpx

        sub = delivery.subscription
        body = notification_body(sub, delivery.record, delivery.pipeline_uuid, delivery.msg_id, test=delivery.test)
        payload = encode(body)
        headers = {
            "content-type": "application/json",
            **signed_headers(str(sub["secret"]), delivery.msg_id, int(time.time()), payload),
            **cloudevents_headers(body),
        }
        url = str(sub["url"])
        try:
            status = http.post(url, payload, headers)
        except httpx.InvalidURL:
            return Attempt(Outcome.RETRY, None, f"the URL cannot be sent to ({shown_url(url)})")
        except httpx.HTTPError as exc:  # refused, reset, timed out, not an HTTP answer
            return Attempt(Outcome.RETRY, None, f"{failure_name(exc)} reaching {shown_url(url)}")
        return judged(status, url, give_up_on_4xx=False)


SINK = WebhookSink()
