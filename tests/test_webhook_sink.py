"""Webhooks as CloudEvents (issue 22), and the HTTP client's proxies.

A delivery is parsed by the CloudEvents SDK (PyPI ``cloudevents``, its HTTP binding) and its
Standard Webhooks signature verified by the reference library, on both stores. Proxies: a small
forward proxy on loopback records what reaches it and relays plain-HTTP requests to the receiver,
so each test sees which way a notification went and what was vetted before.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_binary_event

from pipelinejobs import egress
from pipelinejobs.notify import subscriptions
from pipelinejobs.settings import Settings, load_settings, proxy_environment
from pipelinejobs.sinks import registry
from pipelinejobs.sinks.base import Attempt, Delivery, NoFacts
from pipelinejobs.sinks.http import Clients, Proxies
from pipelinejobs.store.base import JobStore
from pipelinejobs.store.records import EventRecord
from tests.conftest import EXAMPLE_PIPELINE_UUID, ROOT
from tests.notify_fixtures import Receiver, verify_with_library
from tests.test_notify import FAST, drain, new_job, now, send


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(FAST, ROOT / "config.yml")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver(fail_first=1).start()  # the first attempt fails: the retry must keep the event's id
    yield started
    started.stop()


# -- CloudEvents ----------------------------------------------------------------------------------
def test_a_webhook_delivery_is_a_cloudevent_whose_signature_still_verifies(
    store: JobStore, settings: Settings, receiver: Receiver
) -> None:
    uuid, token = new_job(store)
    sub = subscriptions.add_subscription(
        store,
        settings,
        subscriptions.new_subscription(now=now(), pipeline_uuid=EXAMPLE_PIPELINE_UUID, url=receiver.url),
    )
    send(store, settings, uuid, token, "run")
    for _ in range(50):  # the retry is due within milliseconds here: pass until it was sent
        drain(store, settings)
        if len(receiver.received) >= 2:
            break
        threading.Event().wait(0.02)
    first, second = receiver.wait_for(2)
    for got in (first, second):
        event = from_binary_event(HTTPMessage(headers=got.headers, body=got.body))
        body = got.json()
        assert event.get_specversion() == "1.0" and event.get_id() == got.headers["webhook-id"] == body["id"]
        assert event.get_source() == f"/pipelinejobs/jobs/{uuid}" and event.get_type() == "pipelinejob.event"
        assert event.get_time() is not None and event.get_time().isoformat().startswith(body["time"][:19])
        assert event.get_datacontenttype() == "application/json" and event.get_data() == body
        assert "ce-datacontenttype" not in got.headers  # Content-Type stands for it
        assert verify_with_library(sub["secret"], got) == body  # the body is exactly what was signed
    assert first.headers["ce-id"] == second.headers["ce-id"]  # a redelivery keeps its id: receivers deduplicate


def test_a_test_send_is_a_cloudevent_too(store: JobStore, settings: Settings) -> None:
    from pipelinejobs.notify.dispatcher import send_test

    receiver = Receiver().start()
    try:
        sub = subscriptions.add_subscription(
            store, settings, subscriptions.new_subscription(now=now(), job_uuid="j-1", url=receiver.url)
        )
        assert send_test(store, settings, sub, now=now())["ok"] is True
        got = receiver.wait_for(1)[0]
        event = from_binary_event(HTTPMessage(headers=got.headers, body=got.body))
        assert event.get_type() == "pipelinejob.test" and event.get_source() == "/pipelinejobs/jobs/j-1"
        verify_with_library(sub["secret"], got)
    finally:
        receiver.stop()


# -- proxies --------------------------------------------------------------------------------------
class ForwardProxy:
    """A loopback HTTP proxy: it keeps each request line and its Proxy-Authorization, answers CONNECT
    with 502, and relays an absolute-form request to ``upstream`` (whatever host the URL names)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.seen: list[tuple[str, str | None]] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            head, _, rest = buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            self.seen.append((lines[0], fields.get("proxy-authorization")))
            if lines[0].startswith("CONNECT"):
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            length = int(fields.get("content-length", "0"))
            while len(rest) < length:
                rest += conn.recv(65536)
            method, target, version = lines[0].split(" ")
            path = "/" + target.split("://", 1)[1].split("/", 1)[1]
            kept = [line for line in lines[1:] if not line.lower().startswith(("proxy-", "connection"))]
            request = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close"]) + "\r\n\r\n"
            with socket.create_connection(("127.0.0.1", self.upstream)) as up:
                up.sendall(request.encode("latin-1") + rest[:length])
                while chunk := up.recv(65536):
                    conn.sendall(chunk)

    def close(self) -> None:
        self.server.close()


class Names:
    """A resolver: ``hook.example`` and ``direct.example`` are this host, ``inside.example`` a private address."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
        self.calls.append(host)
        address = "10.1.2.3" if host == "inside.example" else "127.0.0.1"
        return [(socket.AF_INET, (address, port))]


@pytest.fixture
def proxy() -> Iterator[tuple[ForwardProxy, Receiver]]:
    target = Receiver().start()
    port = int(target.url.split(":")[2].split("/")[0])
    relay = ForwardProxy(port)
    yield relay, target
    relay.close()
    target.stop()


def _post(url: str, proxies: Proxies | None, names: Names) -> Attempt:
    sub = {"id": "sub_p", "target": "webhook", "url": url, "secret": "whsec_" + "A" * 32}
    record = EventRecord("00000000-0000-0000-0000-000000000000", 0, "e", "test", now(), None, "RUNNING")
    http = Clients(5, egress.Policy(egress.allowed_networks("127.0.0.0/8"), names), proxies)
    try:
        return registry.deliver(Delivery(sub, record, None, "msg_p", NoFacts(), test=True), http)
    finally:
        http.close()


def test_through_a_configured_proxy_the_destination_is_vetted_here_first(
    proxy: tuple[ForwardProxy, Receiver],
) -> None:
    relay, target = proxy
    names = Names()
    via = Proxies(http=relay.url.replace("http://", "http://ops:pr0xy-pw@"), https=relay.url, no_proxy="direct.example")
    tried = _post("http://hook.example:8080/hook?k=1", via, names)
    assert tried.ok, tried
    assert relay.seen == [("POST http://hook.example:8080/hook?k=1 HTTP/1.1", "Basic b3BzOnByMHh5LXB3")]
    assert names.calls == ["hook.example"]  # resolved and vetted here; the proxy connects by name
    assert target.wait_for(1)[0].headers["host"] == "hook.example:8080"
    # a destination the policy refuses is refused before the proxy hears of it
    refused = _post("http://inside.example/hook", via, names)
    assert refused.refused and refused.error and refused.error.startswith("refused by policy: inside.example")
    assert len(relay.seen) == 1
    # NO_PROXY: straight to the vetted address, the proxy never sees it
    port = target.url.split(":")[2].split("/")[0]
    assert _post(f"http://direct.example:{port}/hook", via, names).ok
    assert len(relay.seen) == 1 and len(target.received) == 2
    # https goes through a CONNECT tunnel to the named host; this proxy refuses it: a failed attempt
    tunnel = _post("https://hook.example/hook", via, names)
    assert not tunnel.ok and tunnel.status is None and tunnel.error and "hook.example" in tunnel.error
    assert relay.seen[-1] == ("CONNECT hook.example:443 HTTP/1.1", None)


def test_without_a_proxy_nothing_goes_through_one(proxy: tuple[ForwardProxy, Receiver]) -> None:
    relay, target = proxy
    port = target.url.split(":")[2].split("/")[0]
    assert _post(f"http://hook.example:{port}/hook", None, Names()).ok
    assert relay.seen == [] and len(target.received) == 1


def test_which_proxy_the_settings_and_the_environment_choose() -> None:
    environment = {"HTTPS_PROXY": "proxy.example:3128", "http_proxy": "http://web.example:80", "NO_PROXY": ".site.org"}
    chosen = Proxies.configured(None, environment)
    assert chosen == Proxies("http://web.example:80", "http://proxy.example:3128", ".site.org")
    assert chosen.for_url("https://hooks.example.com/x") == "http://proxy.example:3128"
    assert chosen.for_url("https://a.site.org/x") is None and chosen.for_url("http://site.org/x") is None
    assert Proxies.configured("none", environment) is None  # the setting wins over the environment
    forced = Proxies.configured("http://ops.example:8080", environment)
    assert forced is not None and forced.for_url("http://x.example/") == "http://ops.example:8080"
    assert forced.for_url("https://b.site.org/") is None  # NO_PROXY still applies
    assert Proxies.configured(None, {}) is None
    from pipelinejobs.errors import PipelineJobsError

    with pytest.raises(PipelineJobsError, match="proxy"):
        Proxies.configured("socks5://x:1080", {})


def test_under_abaco_the_environment_chooses_no_proxy() -> None:
    """Abaco turns a message's URL parameters into environment variables: a sender must not pick a proxy."""
    env = {"HTTPS_PROXY": "http://evil.example:3128", "NO_PROXY": "x"}
    assert proxy_environment(env) == env
    assert proxy_environment({**env, "_abaco_execution_id": "e1"}) == {}
    settings = load_settings({**env, "_abaco_execution_id": "e1"}, ROOT / "config.yml")
    assert Clients.from_settings(settings).proxies is None
    password = load_settings({"https_proxy": "http://ops:s3cret-pw@proxy:3128"}, ROOT / "config.yml")
    assert "s3cret-pw" in password.secrets  # masked in any log line
