"""Where notifications may go: public addresses, and the networks a deployment allows.

A webhook URL, an actor's messages URL and an ``api_server`` are chosen by whoever holds an API
token, and the dispatcher sends from inside the deployment's network. Unchecked, a subscription
can make it POST to cloud metadata (169.254.169.254), to ``10.0.0.5`` or ``127.0.0.1:6379``, and
``subscription test`` then tells which ports answer. So a sink's host is resolved the way a
connect resolves it (``getaddrinfo``, which also reads ``2852039166`` or ``0251.0376.0251.0376``
as 169.254.169.254), every address it gives is vetted, and the connection goes to a vetted
address, never through a second resolution (DNS rebinding: a name that answered a public address
when checked cannot answer a private one when connected). This happens when a subscription is
made and again at every send.

Refused unless ``notifications.allowed_networks`` (CIDRs) holds the address: loopback, private,
link-local, unique-local, shared (100.64.0.0/10), multicast, unspecified, reserved, documentation
and other special-purpose ranges (:data:`REFUSED_NETWORKS`), IPv4 addresses written in IPv6
(mapped, NAT64, 6to4: their IPv4 address is vetted) and cloud metadata host names, whatever they
resolve to. Of a name's addresses, only the allowed ones are used; with none, the send is refused.

:func:`vet` is the policy as a pure function (the resolver is a parameter); :class:`Policy` holds
it with the settings, and :class:`VettedBackend` is the httpcore network backend that vets each
connection it opens: every sink sends through it (``pipelinejobs.sinks.http``), directly or, when
a proxy is configured, after vetting the destination's addresses itself.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import ErrorKind, PipelineJobsError

if TYPE_CHECKING:  # imported where they are used: the event path imports this module
    import ipaddress

    Address = ipaddress.IPv4Address | ipaddress.IPv6Address
    Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: the words a refused send or test is reported with (delivery records, `subscription test`)
REFUSED = "refused by policy"
#: resolves a host and port as ``getaddrinfo`` does: (address family, socket address) pairs
Resolver = Callable[[str, int], Sequence[tuple[int, tuple[Any, ...]]]]

#: Names of cloud metadata services, refused whatever they resolve to (and whatever is allowed).
METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
        "metadata.tencentyun.com",
    }
)
#: Refused ranges, the first that holds an address names why (IANA's special-purpose registries).
REFUSED_NETWORKS: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address (where cloud metadata services answer)"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
    ("192.0.0.0/24", "an IETF protocol address"),
    ("192.0.2.0/24", "a documentation address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("192.88.99.0/24", "a 6to4 relay address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved or broadcast address"),
    ("::/128", "the unspecified address"),
    ("::1/128", "a loopback address"),
    ("::/96", "an IPv4-compatible address (deprecated)"),
    ("100::/64", "a discard address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("2001::/23", "an IETF protocol address"),
    ("2001:db8::/32", "a documentation address"),
    ("fc00::/7", "a unique-local address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
)
_NAT64 = "64:ff9b::/96"  # the well-known prefix: the last 32 bits are the IPv4 address reached
_GLOBAL_UNICAST = "2000::/3"


class Refused(PipelineJobsError):
    """A sink's host is not an allowed destination; the message starts with "refused by policy"."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.BAD_MESSAGE, f"{REFUSED}: {message}")


@dataclass(frozen=True)
class Destination:
    """A vetted address to connect to: the family and socket address ``getaddrinfo`` gave."""

    family: int
    sockaddr: tuple[Any, ...]

    @property
    def host(self) -> str:
        """The address as text: connecting to it needs no resolution (``fe80::1%eth0`` keeps its scope)."""
        return str(self.sockaddr[0])


# -- the policy as a pure function --------------------------------------------------------------
def system_resolver(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]]:
    """``getaddrinfo`` as ``socket.create_connection`` calls it, keeping IPv4 and IPv6 answers."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [(family, sockaddr) for family, _, _, _, sockaddr in found if family in (socket.AF_INET, socket.AF_INET6)]


def _numeric(host: str, port: int) -> list[tuple[int, tuple[Any, ...]]] | None:
    """The socket layer's own reading of a numeric host (decimal, octal, hex, short IPv4 forms; IPv6),
    with no DNS query; None for a name."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    return [(family, sockaddr) for family, _, _, _, sockaddr in found]


@cache
def _refused_table() -> tuple[tuple[Network, str], ...]:
    """:data:`REFUSED_NETWORKS` parsed, on first use (``ipaddress`` is not loaded for the event path)."""
    import ipaddress

    return tuple((ipaddress.ip_network(cidr), why) for cidr, why in REFUSED_NETWORKS)


def refusal_reason(address: Address, allowed: Sequence[Network] = ()) -> str | None:
    """Why ``address`` may not be sent to (e.g. "a loopback address"), or None when it may."""
    import ipaddress

    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket
    if any(address.version == network.version and address in network for network in allowed):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = refusal_reason(embedded)
            return None if inner is None else f"{inner} reached through {_embedded_kind(address)}"
    for network, why in _refused_table():
        if address.version == network.version and address in network:
            return why
    if isinstance(address, ipaddress.IPv6Address) and address not in ipaddress.ip_network(_GLOBAL_UNICAST):
        return "not a global unicast address"
    if not address.is_global or address.is_multicast:  # whatever this Python's registry adds to the table
        return "not a globally reachable address"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address leads to."""
    import ipaddress

    if address in ipaddress.ip_network(_NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def _embedded_kind(address: ipaddress.IPv6Address) -> str:
    import ipaddress

    return "NAT64" if address in ipaddress.ip_network(_NAT64) else "6to4"


def allowed_networks(value: Any) -> tuple[Network, ...]:
    """``notifications.allowed_networks``: CIDRs (or addresses) as a list or comma-separated text.

    A value that is not one is a configuration error, not an empty list: a typo must not quietly
    refuse (or allow) a deployment's receivers.
    """
    import ipaddress

    if value in (None, ""):
        return ()
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    networks = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise PipelineJobsError(
                ErrorKind.CONFIGURATION,
                f"notifications.allowed_networks: {text[:64]!r} is not a CIDR such as 127.0.0.0/8 or fd00::/8",
            ) from None
    return tuple(networks)


def vet(host: str, port: int, *, allowed: Sequence[Network] = (), resolve: Resolver | None = None) -> list[Destination]:
    """The addresses of ``host`` that may be connected to, in the resolver's order; :class:`Refused` if none.

    ``socket.gaierror`` (an ``OSError``) when a name does not resolve: the sender treats that as a
    failed attempt, to try again later, not as a refusal.
    """
    import ipaddress

    name = host.strip().rstrip(".").lower()
    if not name:
        raise Refused("the URL names no host")
    if name in METADATA_NAMES:
        raise Refused(f"{host[:100]} is a cloud metadata service")
    numeric = _numeric(name, port)
    try:
        found = numeric if numeric is not None else (resolve or system_resolver)(name, port)
    except (UnicodeError, ValueError) as exc:  # not a name DNS can carry (a NUL, a label over 63 octets)
        raise socket.gaierror(socket.EAI_NONAME, "not a host name") from exc
    usable: list[Destination] = []
    reasons: list[str] = []
    for family, sockaddr in found:
        try:
            address = ipaddress.ip_address(sockaddr[0])
        except ValueError:
            reasons.append("not an IP address")
            continue
        reason = refusal_reason(address, allowed)
        if reason is None:
            usable.append(Destination(family, tuple(sockaddr)))
        else:
            reasons.append(reason)
    if not usable:
        why = reasons[0] if reasons else "no address"
        subject = f"{host[:100]} is" if numeric is not None else f"{host[:100]} resolves only to addresses such as"
        raise Refused(f"{subject} {why}; see notifications.allowed_networks")
    return usable


def port_of(url: str) -> tuple[str, int]:
    """The host and port a URL connects to (``BAD_MESSAGE`` for a port that is not one, or a broken IPv6 host)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise PipelineJobsError(ErrorKind.BAD_MESSAGE, "the URL's host or port cannot be read") from None
    return parts.hostname or "", port or (443 if parts.scheme == "https" else 80)


# -- the policy with its settings ---------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """The outbound policy of a process: the allowed networks, and how hosts are resolved."""

    allowed: tuple[Network, ...] = ()
    resolve: Resolver = field(default=system_resolver)

    @classmethod
    def from_settings(cls, settings: Any, resolve: Resolver | None = None) -> Policy:
        networks = allowed_networks(settings.value("notifications", "allowed_networks"))
        return cls(networks, resolve or system_resolver)

    def vet(self, host: str, port: int) -> list[Destination]:
        return vet(host, port, allowed=self.allowed, resolve=self.resolve)

    def check_url(self, url: str, what: str) -> None:
        """At subscription time: ``BAD_MESSAGE`` naming ``what`` when ``url`` may not be sent to."""
        try:
            host, port = port_of(url)
        except PipelineJobsError as exc:
            raise PipelineJobsError(ErrorKind.BAD_MESSAGE, f"{what}: {exc.message}", field=what) from None
        try:
            self.vet(host, port)
        except Refused as exc:
            raise PipelineJobsError(ErrorKind.BAD_MESSAGE, f"{what} {exc.message}", field=what) from None
        except OSError:
            raise PipelineJobsError(
                ErrorKind.BAD_MESSAGE, f"{what}: the host {host[:100]!r} could not be resolved", field=what
            ) from None


class VettedBackend:
    """An httpcore network backend that connects to vetted addresses only (the policy's ``vet``).

    httpcore asks it for a TCP connection to the URL's host; it vets the host's addresses and has
    httpcore's own blocking backend connect to the first allowed one that answers, by its numeric
    address (no second resolution). TLS still names the URL's host (httpcore passes it as SNI).
    A refusal propagates as :class:`Refused`; an unresolvable name as ``httpcore.ConnectError``.
    """

    def __init__(self, policy: Policy) -> None:
        import httpcore

        self.policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> Any:
        import httpcore

        try:
            destinations = self.policy.vet(host, port)
        except OSError as exc:  # the name does not resolve: a failed attempt, as a refused connection is
            raise httpcore.ConnectError(f"{type(exc).__name__} resolving the host") from exc
        failure: Exception | None = None
        for destination in destinations:
            try:
                return self._inner.connect_tcp(destination.host, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
        raise Refused("a Unix socket is not a notification destination")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)
