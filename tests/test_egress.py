"""The outbound address policy (issue 18, finding 4): what it refuses, how it reads hosts, rebinding.

The expected classifications come from IANA's IPv4 and IPv6 special-purpose address registries
(RFC 6890 and its updates), not from ``pipelinejobs.egress``; the numeric host forms are checked
against the C library's own reading (``socket.inet_aton``) before they are fed to the policy.
Resolvers are injected: each test decides what a name resolves to, and when. Deliveries go to
real HTTP receivers on this host (``tests.notify_fixtures``), through the sinks and the pooled httpx
client the dispatcher sends with (``pipelinejobs.sinks.http``).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelinejobs import cli, egress
from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.notify import dispatcher, subscriptions
from pipelinejobs.settings import Settings, load_settings
from pipelinejobs.sinks import registry
from pipelinejobs.sinks.base import Attempt, Delivery, NoFacts
from pipelinejobs.sinks.http import Clients
from pipelinejobs.store.base import JobStore
from pipelinejobs.store.records import EventRecord
from tests.conftest import EXAMPLE_PIPELINE_UUID, ROOT
from tests.notify_fixtures import Receiver
from tests.server_fixtures import free_port
from tests.test_notify import FAST, new_job, now, outbox, send

METADATA = "169.254.169.254"
PUBLIC_V4, PUBLIC_V6 = "1.1.1.1", "2606:4700:4700::1111"  # Cloudflare's resolver: globally reachable

#: (address, words of the reason): one or more per refused range of IANA's special-purpose registries
REFUSED = [
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    (METADATA, "link-local"),
    ("169.254.0.1", "link-local"),
    ("10.0.0.5", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "shared"),
    ("100.100.100.200", "shared"),  # Alibaba Cloud's metadata service
    ("192.0.0.8", "IETF protocol"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("192.88.99.1", "6to4 relay"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved or broadcast"),
    ("255.255.255.255", "reserved or broadcast"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::127.0.0.1", "IPv4-compatible"),
    ("::a9fe:a9fe", "IPv4-compatible"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: the IPv4 address is what a dual-stack socket reaches
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:10.0.0.5", "private"),
    ("64:ff9b::a9fe:a9fe", "link-local address (where cloud metadata services answer) reached through NAT64"),
    ("64:ff9b::a00:5", "private address reached through NAT64"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("2002:a9fe:a9fe::1", "reached through 6to4"),
    ("2002:7f00:1::", "loopback address reached through 6to4"),
    ("100::1", "discard"),
    ("2001::1", "IETF protocol"),  # Teredo
    ("2001:db8::1", "documentation"),
    ("fd00::1", "unique-local"),
    ("fd00:ec2::254", "unique-local"),  # AWS's IPv6 metadata service
    ("fc00::1", "unique-local"),
    ("fe80::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("4000::1", "not a global unicast"),
]
ALLOWED = [PUBLIC_V4, "8.8.8.8", "93.184.215.14", PUBLIC_V6, "2a00:1450:4001::200e", "64:ff9b::808:808"]


class Resolver:
    """A resolver the test scripts: ``answers`` per call, in turn (the last one repeats); calls are counted."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
        self.calls.append(host)
        addresses = self.answers[min(len(self.calls), len(self.answers)) - 1]
        return [(socket.AF_INET6, (a, port, 0, 0)) if ":" in a else (socket.AF_INET, (a, port)) for a in addresses]


def never(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    raise AssertionError(f"a numeric host ({host}) must not be resolved through DNS")


# -- the pure policy --------------------------------------------------------------------------------
@pytest.mark.parametrize(("address", "words"), REFUSED)
def test_every_special_purpose_range_is_refused_by_default(address: str, words: str) -> None:
    with pytest.raises(egress.Refused) as err:
        egress.vet(address, 80, resolve=never)
    assert err.value.message.startswith("refused by policy: ") and words in err.value.message
    assert err.value.kind is ErrorKind.BAD_MESSAGE


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_used_as_they_are(address: str) -> None:
    [destination] = egress.vet(address, 443, resolve=never)
    assert ipaddress.ip_address(destination.host) == ipaddress.ip_address(address)
    assert destination.sockaddr[1] == 443


#: host forms the C library reads as 169.254.169.254 (decimal, octal, hex, short) or 127.0.0.1
NUMERIC_FORMS = [
    ("2852039166", METADATA),
    ("0251.0376.0251.0376", METADATA),
    ("0xa9.0xfe.0xa9.0xfe", METADATA),
    ("0xA9FEA9FE", METADATA),
    ("025177524776", METADATA),
    ("169.254.43518", METADATA),
    ("169.16689662", METADATA),
    ("127.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
]


@pytest.mark.parametrize(("form", "meant"), NUMERIC_FORMS)
def test_numeric_host_forms_are_read_as_the_socket_layer_reads_them(form: str, meant: str) -> None:
    assert socket.inet_aton(form) == socket.inet_aton(meant)  # the vector is right: libc reads it so
    with pytest.raises(egress.Refused):
        egress.vet(form, 80, resolve=never)
    allowed = egress.allowed_networks(f"{meant}/32")
    [destination] = egress.vet(form, 80, allowed=allowed, resolve=never)
    assert destination.host == meant  # the connection goes to the address the form means


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/",
        "http://[fd00::1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://2852039166/",
        "http://0251.0376.0251.0376/",
        "http://127.0.0.1:6379/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.google.internal./",
        "http://metadata/",
        "https://instance-data/latest/",
    ],
)
def test_subscription_urls_that_reach_inside_are_refused(url: str) -> None:
    policy = egress.Policy(resolve=never)
    with pytest.raises(PipelineJobsError) as err:
        policy.check_url(url, "url")
    assert err.value.kind is ErrorKind.BAD_MESSAGE and err.value.message.startswith("url refused by policy: ")


@pytest.mark.parametrize(
    "url",
    ["http://[::1/", "http://[fd00::1/x", "http://h.example:99999/", "http://a%00b/", "http://" + "x" * 300 + "/"],
)
def test_a_url_that_cannot_be_vetted_is_a_clear_refusal(url: str) -> None:
    with pytest.raises(PipelineJobsError) as err:
        sub = subscriptions.new_subscription(now=now(), pipeline_uuid=EXAMPLE_PIPELINE_UUID, url=url)
        subscriptions.check_destinations(sub, egress.Policy(resolve=egress.system_resolver))
    assert err.value.kind is ErrorKind.BAD_MESSAGE and "url" in err.value.message


def test_the_allowlist_opens_only_its_networks() -> None:
    loopback = egress.allowed_networks("127.0.0.0/8, ::1")
    assert egress.vet("127.0.0.1", 80, allowed=loopback, resolve=never)[0].host == "127.0.0.1"
    assert egress.vet("::1", 80, allowed=loopback, resolve=never)[0].host == "::1"
    assert egress.vet("::ffff:127.0.0.1", 80, allowed=loopback, resolve=never)  # the same address, mapped
    for outside in ("10.0.0.5", METADATA, "fd00::1", "128.0.0.1"):
        if ipaddress.ip_address(outside).is_global:
            assert egress.vet(outside, 80, allowed=loopback, resolve=never)
            continue
        with pytest.raises(egress.Refused):
            egress.vet(outside, 80, allowed=loopback, resolve=never)
    # a name of a metadata service is refused whatever it resolves to and whatever is allowed
    with pytest.raises(egress.Refused, match="cloud metadata service"):
        egress.vet("metadata.google.internal", 80, allowed=loopback, resolve=Resolver(["127.0.0.1"]))
    # NAT64 of an allowed IPv4 address is not that address: only the allowlist's own forms open
    with pytest.raises(egress.Refused):
        egress.vet("64:ff9b::7f00:1", 80, allowed=loopback, resolve=never)


def test_the_allowlist_setting_takes_cidrs_and_refuses_anything_else() -> None:
    assert egress.allowed_networks(None) == () and egress.allowed_networks("") == ()
    assert egress.allowed_networks(["10.20.0.0/16", "fd00::/8"]) == (
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert egress.allowed_networks(" 127.0.0.1 ,, 10.1.2.3/8") == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
    )
    for bad in ("localhost", "10.0.0.0/33", "*", "127.0.0.0/8;rm"):
        with pytest.raises(PipelineJobsError) as err:
            egress.allowed_networks(bad)
        assert err.value.kind is ErrorKind.CONFIGURATION
    settings = load_settings({"_REACTOR_NOTIFICATIONS_ALLOWED_NETWORKS": "127.0.0.0/8"}, ROOT / "config.yml")
    assert egress.Policy.from_settings(settings).allowed == (ipaddress.ip_network("127.0.0.0/8"),)
    assert "127.0.0.0/8" not in settings.secrets  # a network is not a secret: the logs may name it
    assert egress.Policy.from_settings(load_settings({}, ROOT / "config.yml")).allowed == ()  # default: none
    with pytest.raises(PipelineJobsError) as err:  # settings are checked at load: serve stops before it binds
        load_settings({"_REACTOR_NOTIFICATIONS_ALLOWED_NETWORKS": "10.0.0.0/8,bogus"}, ROOT / "config.yml")
    assert err.value.kind is ErrorKind.CONFIGURATION
    assert "_REACTOR_NOTIFICATIONS_ALLOWED_NETWORKS" in err.value.message and "CIDR" in err.value.message


def test_of_a_name_only_its_allowed_addresses_are_used() -> None:
    both = Resolver(["10.0.0.5", PUBLIC_V4, "fd00::1", PUBLIC_V6])
    assert [d.host for d in egress.vet("mixed.example", 80, resolve=both)] == [PUBLIC_V4, PUBLIC_V6]
    inside = Resolver(["10.0.0.5", METADATA])
    with pytest.raises(egress.Refused) as err:
        egress.vet("inside.example", 80, resolve=inside)
    assert "inside.example resolves only to addresses such as a private address" in err.value.message
    assert "10.0.0.5" not in err.value.message  # a name's addresses are not told: no map of the inside


def test_a_name_that_does_not_resolve_is_a_failure_to_retry_not_a_refusal() -> None:
    def nowhere(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(OSError):
        egress.vet("nowhere.invalid", 80, resolve=nowhere)
    with pytest.raises(PipelineJobsError) as err:  # when subscribing, a clear refusal
        egress.Policy(resolve=nowhere).check_url("http://nowhere.invalid/hook", "url")
    assert err.value.kind is ErrorKind.BAD_MESSAGE and "could not be resolved" in err.value.message


# -- sends: vetted at connect time, to the vetted address -----------------------------------------
@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(FAST, ROOT / "config.yml")  # FAST allows 127.0.0.0/8: the receivers are local


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver(status=200).start()
    yield started
    started.stop()


def _deliver(subscription: dict[str, Any], http: Clients) -> Attempt:
    """A sample notification through the subscription's sink, as `subscription test` sends it."""
    sample = EventRecord("00000000-0000-0000-0000-000000000000", 0, "e", "test", now(), None, "RUNNING")
    return registry.deliver(Delivery(subscription, sample, None, "msg_test", NoFacts(), test=True), http)


def _clients(resolve: Resolver, allowed: str = "127.0.0.0/8") -> Clients:
    return Clients(5, egress.Policy(egress.allowed_networks(allowed), resolve))


def _subscription(**target: Any) -> dict[str, Any]:
    return subscriptions.new_subscription(now=now(), pipeline_uuid=EXAMPLE_PIPELINE_UUID, **target)


@pytest.mark.parametrize("target", ["webhook", "actor"])
def test_a_send_connects_to_the_address_it_vetted_never_resolving_twice(target: str, receiver: Receiver) -> None:
    """``hook.invalid`` exists in no DNS: the POST arrives only if the connection used the vetted address.
    The resolver also answers a private address first: it is skipped, not tried."""
    port = receiver.url.split(":")[2].split("/")[0]
    if target == "webhook":
        sub = _subscription(url=f"http://hook.invalid:{port}/hook")
    else:
        sub = _subscription(actor=f"http://hook.invalid:{port}/actors/v2/next/messages", nonce="SD2E_n0nce")
    resolve = Resolver(["10.0.0.5", "127.0.0.1"])
    http = _clients(resolve)
    try:
        tried = _deliver(sub, http)
    finally:
        http.close()
    assert tried.ok and not tried.refused, tried
    [got] = receiver.wait_for(1)
    assert got.headers["host"] == f"hook.invalid:{port}" and resolve.calls == ["hook.invalid"]


@pytest.mark.parametrize("target", ["webhook", "actor"])
def test_dns_rebinding_is_refused_at_send_time(target: str, receiver: Receiver) -> None:
    """The name answers a public address when the subscription is checked, then the metadata address."""
    port = receiver.url.split(":")[2].split("/")[0]
    url = f"http://rebind.invalid:{port}/" + ("hook" if target == "webhook" else "actors/v2/next/messages")
    sub = _subscription(url=url) if target == "webhook" else _subscription(actor=url, nonce="SD2E_n0nce")
    resolve = Resolver([PUBLIC_V4], [METADATA])
    subscriptions.check_destinations(sub, egress.Policy(resolve=resolve))  # accepted when made
    http = Clients(5, egress.Policy(resolve=resolve))
    try:
        tried = _deliver(sub, http)
    finally:
        http.close()
    assert tried.refused and not tried.ok and tried.status is None
    assert tried.error is not None and tried.error.startswith("refused by policy: rebind.invalid resolves only to")
    assert resolve.calls == ["rebind.invalid", "rebind.invalid"] and receiver.received == []


def test_the_dispatcher_gives_up_a_refused_send_at_once_and_records_why(
    store: JobStore, settings: Settings, receiver: Receiver
) -> None:
    """Made while the name was public; refused when delivered: one record, "refused", nothing pending,
    nothing sent, and no retry (the policy says the same until the process restarts with another)."""
    port = receiver.url.split(":")[2].split("/")[0]
    resolve = Resolver([PUBLIC_V4], [METADATA])
    sub = subscriptions.add_subscription(
        store, settings, _subscription(url=f"http://rebind.invalid:{port}/hook"), policy=egress.Policy(resolve=resolve)
    )
    uuid, token = new_job(store)
    send(store, settings, uuid, token, "run")
    running = dispatcher.Dispatcher(store, settings, policy=egress.Policy(resolve=resolve))
    try:
        report = running.drain()
        assert (report.refused, report.delivered, report.retrying, report.gave_up) == (1, 0, 0, 0)
        assert running.drain().refused == 0  # not tried again
    finally:
        running.close()
    [row] = store.list_deliveries(subscription=sub["id"])
    assert row["outcome"] == "refused" and row["error"].startswith("refused by policy: ") and row["status"] is None
    assert outbox(store) == [] and receiver.received == []


def test_a_test_send_to_a_refused_address_says_the_same_for_an_open_and_a_closed_port(
    store: JobStore, receiver: Receiver
) -> None:
    settings = load_settings({}, ROOT / "config.yml")  # nothing allowed: 127.0.0.1 is refused
    open_port, closed_port = receiver.url.split(":")[2].split("/")[0], str(free_port())
    answers = []
    for port in (open_port, closed_port):
        sub = _subscription(url=f"http://127.0.0.1:{port}/hook")  # made while loopback was allowed
        store.save_subscription(sub)
        answer = dispatcher.send_test(store, settings, sub, now=now())
        answers.append({k: v for k, v in answer.items() if k != "webhook_id"})
    assert (
        answers[0]
        == answers[1]
        == {
            "ok": False,
            "outcome": "refused by policy",
            "status": None,
            "error": "refused by policy: 127.0.0.1 is a loopback address; see notifications.allowed_networks",
        }
    )
    assert receiver.received == []


# -- `pipelinejobs subscription add|test` ----------------------------------------------------------
def test_the_cli_refuses_inside_addresses_and_stores_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "catalog.sqlite3"
    monkeypatch.setenv("_REACTOR_STORE_SQLITE_PATH", str(path))
    for url in ("http://169.254.169.254/latest/meta-data/", "http://2852039166/", "http://[fd00::1]/"):
        code = cli.main(["subscription", "add", "--pipeline", EXAMPLE_PIPELINE_UUID, "--url", url])
        _, err = capsys.readouterr()
        assert code == cli.EXIT_CODES[ErrorKind.BAD_MESSAGE] and "refused by policy" in err, err
    monkeypatch.setenv("PIPELINEJOBS_ACTOR_NONCE", "SD2E_n0nce-value")
    code = cli.main(
        ["subscription", "add", "--pipeline", EXAMPLE_PIPELINE_UUID, "--actor", "x", "--api-server", "http://10.0.0.5"]
    )
    _, err = capsys.readouterr()
    assert code == cli.EXIT_CODES[ErrorKind.BAD_MESSAGE] and "api_server refused by policy" in err, err
    assert cli.main(["--json", "subscription", "list"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    # allowed explicitly, it is added; without the allowance, its test is refused before any connection
    monkeypatch.setenv("_REACTOR_NOTIFICATIONS_ALLOWED_NETWORKS", "127.0.0.0/8")
    url = f"http://127.0.0.1:{free_port()}/hook"
    assert cli.main(["--json", "subscription", "add", "--pipeline", EXAMPLE_PIPELINE_UUID, "--url", url]) == 0
    sub_id = json.loads(capsys.readouterr().out)["id"]
    monkeypatch.delenv("_REACTOR_NOTIFICATIONS_ALLOWED_NETWORKS")
    code = cli.main(["subscription", "test", sub_id])
    out, _ = capsys.readouterr()
    assert code == cli.EXIT_CODES[ErrorKind.BAD_MESSAGE]
    assert ": refused by policy (refused by policy: 127.0.0.1 is a loopback address" in out, out
