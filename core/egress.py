"""SSRF-safe egress for outbound deliveries: which URLs a merchant endpoint may name, and an
httpcore pool that vets every address a destination resolves to at connect time and dials only
the vetted address, so DNS rebinding cannot steer a delivery into our own network.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeAlias
from urllib.parse import urlsplit

import httpcore

from core.errors import DestinationRefused

__all__ = [
    "MAX_URL_LENGTH",
    "Resolver",
    "VettedNetworkBackend",
    "check_destination_url",
    "is_allowed_address",
    "parse_allow_list",
    "resolve_with_getaddrinfo",
    "vetted_connection_pool",
]

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network
# (host, port) -> IP address strings; raises OSError when the name does not resolve.
Resolver: TypeAlias = Callable[[str, int], Awaitable[list[str]]]

MAX_URL_LENGTH = 2048
ALLOWED_SCHEMES = frozenset({"http", "https"})

# Svix's list (svix-webhooks `is_allowed`), made explicit because `ipaddress.is_global` alone
# passes 192.0.0.8, 192.88.99.3, 64:ff9b::7f00:1 and 2002:7f00:1::1 on Python 3.11.
_BLOCKED_IPV4 = tuple(
    IPv4Network(cidr)
    for cidr in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # class E, including 255.255.255.255
    )
)
_BLOCKED_IPV6 = tuple(
    IPv6Network(cidr)
    for cidr in (
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",  # local-use NAT64: where the IPv4 sits depends on the operator
        "100::/64",  # discard
        "2001::/32",  # Teredo
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated, still routed by some stacks)
        "ff00::/8",  # multicast
    )
)
# IANA allocates IPv6 global unicast from 2000::/3 only; everything else is special-purpose.
_IPV6_GLOBAL_UNICAST = IPv6Network("2000::/3")
_NAT64_WELL_KNOWN = IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = IPv6Network("::/96")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_LOCAL_NAMES = ("localhost", "localhost.")
_LOCAL_SUFFIXES = (".localhost", ".localhost.")


def parse_allow_list(text: str) -> tuple[IPNetwork, ...]:
    """Networks from a comma-separated CIDR list such as ``"127.0.0.0/8, ::1/128"``.

    ``""`` (the default of ``Settings.delivery_allow_networks``) allows nothing. A CIDR with
    host bits set (``127.0.0.1/8``) is refused rather than widened, since it is more likely a
    typo than a wish.

    Raises:
        ValueError: an entry is not a network.
    """
    networks: list[IPNetwork] = []
    for entry in text.split(","):
        if entry := entry.strip():
            try:
                networks.append(ipaddress.ip_network(entry))
            except ValueError as exc:
                raise ValueError(f"not a CIDR network in the allow list: {entry!r}") from exc
    return tuple(networks)


def is_allowed_address(address: IPAddress, allow: Sequence[IPNetwork] = ()) -> bool:
    """Whether a delivery may connect to ``address``.

    IPv4-mapped (``::ffff:a.b.c.d``) and IPv4-compatible (``::a.b.c.d``) addresses are judged as
    the IPv4 address they carry, and an IPv6 zone (``%eth0``) is ignored. An address in ``allow``
    is allowed. Otherwise only public unicast is: nothing in Svix's blocked ranges (private,
    loopback, link-local, CGNAT, documentation, benchmarking, multicast, class E, Teredo, SRv6,
    site-local…) nor anything ``ipaddress`` deems non-global, and for IPv6 nothing outside
    2000::/3. NAT64 (64:ff9b::/96) and 6to4 (2002::/16) addresses are
    allowed only when the IPv4 address they embed is public; the allow-list does not extend to
    embedded addresses.
    """
    plain = IPv6Address(int(address)) if isinstance(address, IPv6Address) else address
    canonical = _canonical(plain)
    if any(candidate in network for network in allow for candidate in (plain, canonical)):
        return True
    return _is_public(canonical)


def _canonical(address: IPAddress) -> IPAddress:
    if isinstance(address, IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # :: and ::1 keep their IPv6 meaning
        return IPv4Address(int(address))
    return address


def _is_public(address: IPAddress) -> bool:
    if isinstance(address, IPv4Address):
        return address.is_global and not any(address in network for network in _BLOCKED_IPV4)
    if address in _NAT64_WELL_KNOWN:
        return _is_public(IPv4Address(int(address) & 0xFFFF_FFFF))
    if address.sixtofour is not None:
        return _is_public(address.sixtofour)
    return (
        address in _IPV6_GLOBAL_UNICAST
        and address.is_global
        and not any(address in network for network in _BLOCKED_IPV6)
    )


def check_destination_url(url: str, *, allow: Sequence[IPNetwork] = ()) -> None:
    """Refuse an endpoint URL that can never be a safe delivery destination (at registration).

    Only ``http`` and ``https``; a host; no ``user:pass@`` (nor a bare ``@``); no fragment; a
    port from 1 to 65535; at most :data:`MAX_URL_LENGTH` characters of printable ASCII (give
    international names in their ``xn--`` form). A host written as an address, including the
    legacy numeric forms the system resolver accepts (``127.1``, ``0x7f000001``, ``2130706433``),
    is vetted with :func:`is_allowed_address` against ``allow``. ``localhost`` and
    ``*.localhost`` are refused too unless an allow-list is given, in which case connect time
    decides.

    This is an early, friendly refusal, not the guard: a name may resolve to anything later,
    so :class:`VettedNetworkBackend` vets again on every connection. Messages never repeat the
    URL's credentials.

    Raises:
        DestinationRefused: with the reason ``"too long"``, ``"malformed"``, ``"scheme"``,
            ``"credentials in URL"``, ``"fragment"``, ``"port"`` or ``"private address"``.
    """
    if len(url) > MAX_URL_LENGTH:
        raise DestinationRefused("too long", f"the URL is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or any(char <= " " or char == "\x7f" for char in url):
        raise DestinationRefused(
            "malformed",
            "the URL contains spaces, control or non-ASCII characters"
            " (write international names in their xn-- form)",
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise DestinationRefused("malformed", f"the URL cannot be parsed: {exc}") from exc
    if parts.scheme not in ALLOWED_SCHEMES:
        raise DestinationRefused("scheme", f"only http and https are allowed, not {parts.scheme!r}")
    if "@" in parts.netloc:
        raise DestinationRefused("credentials in URL", "the URL must not carry user info (...@)")
    if "#" in url:
        raise DestinationRefused("fragment", "the URL must not have a #fragment")
    host = parts.hostname
    if not host:
        raise DestinationRefused(
            "malformed",
            "the URL has no host (write IPv6 addresses in brackets: http://[2001:db8::1]/)",
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise DestinationRefused(
            "port", f"the port is not a number from 1 to 65535: {exc}"
        ) from exc
    if port == 0:
        raise DestinationRefused("port", "the port is not a number from 1 to 65535")

    literal = _url_host_address(host, bracketed="[" in parts.netloc)
    if literal is not None:
        if not is_allowed_address(literal, allow):
            raise DestinationRefused("private address", f"{literal} is not a public address")
        return
    if not allow and (host in _LOCAL_NAMES or host.endswith(_LOCAL_SUFFIXES)):
        raise DestinationRefused("private address", f"{host} names this machine")


def _url_host_address(host: str, *, bracketed: bool) -> IPAddress | None:
    """The address a URL host denotes, or None for a (well-formed) name."""
    if bracketed:
        if "%" in host:
            raise DestinationRefused("malformed", "IPv6 zone identifiers (%...) are not allowed")
        try:
            return IPv6Address(host)
        except ValueError as exc:
            raise DestinationRefused("malformed", f"{host!r} is not an IPv6 address") from exc
    try:
        return IPv4Address(host)
    except ValueError:
        pass
    # getaddrinfo() accepts inet_aton's forms (127.1, 0x7f000001, 2130706433, 017700000001),
    # which ipaddress rejects: read them the way the resolver will.
    try:
        return IPv4Address(socket.inet_aton(host))
    except OSError:
        pass
    name = host.removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise DestinationRefused("malformed", f"{host!r} is not a valid host name")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise DestinationRefused("malformed", f"{host!r} is neither an IPv4 address nor a name")
    return None


async def resolve_with_getaddrinfo(host: str, port: int) -> list[str]:
    """The default :data:`Resolver`: the system resolver (A and AAAA) via ``loop.getaddrinfo``."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(sockaddr[0]) for _family, _type, _proto, _name, sockaddr in infos]


class VettedNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to vetted addresses.

    ``connect_tcp`` resolves the host itself, refuses the connection unless every address the
    host resolves to passes :func:`is_allowed_address` (OWASP: a name with one private record
    is refused outright), and then dials the vetted IP literal through ``inner``, falling back
    to the next vetted address if one does not answer. Vetting at connect time, as Svix and
    Convoy do, is what makes the check hold: a registration-time check can be passed by a name
    that later resolves elsewhere (DNS rebinding), whereas the address dialled here is the
    address vetted here. Host names still reach TLS: httpcore passes ``server_hostname`` to
    ``start_tls`` separately (httpcore 1.0.9, ``AsyncHTTPConnection._connect``), so SNI and
    certificate checks use the URL's host, and so does the ``Host`` header.

    The connect timeout covers resolution and every dial. Unix sockets are refused. Resolution
    uses asyncio, so this backend runs on asyncio only (``inner`` defaults to httpcore's public
    ``AnyIOBackend``, which is what its ``AutoBackend`` picks under asyncio).
    """

    def __init__(
        self,
        allow: Sequence[IPNetwork] = (),
        resolve: Resolver | None = None,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allow = tuple(allow)
        self._resolve = resolve or resolve_with_getaddrinfo
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                addresses = await self._vetted_addresses(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        failure: Exception = httpcore.ConnectTimeout(f"connecting to {host} timed out")
        for address in addresses:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            # An IPv4-mapped answer is dialled as the IPv4 address it was judged as, which
            # also works on hosts without IPv6.
            dialled = address.ipv4_mapped if isinstance(address, IPv6Address) else None
            try:
                return await self._inner.connect_tcp(
                    str(dialled or address),
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    async def _vetted_addresses(self, host: str, port: int) -> list[IPAddress]:
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            addresses = await self._resolved(host, port)
        if not addresses:
            raise DestinationRefused("unresolvable", f"{host} has no addresses")
        for address in addresses:
            if not is_allowed_address(address, self._allow):
                raise DestinationRefused(
                    "private address", f"{host} resolves to {address}, which is not public"
                )
        return list(dict.fromkeys(addresses))

    async def _resolved(self, host: str, port: int) -> list[IPAddress]:
        try:
            answers = await self._resolve(host, port)
        except OSError as exc:
            raise DestinationRefused("unresolvable", f"{host} does not resolve: {exc}") from exc
        try:
            return [ipaddress.ip_address(answer) for answer in answers]
        except ValueError as exc:
            raise DestinationRefused("unresolvable", f"{host} resolved to a non-address") from exc

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise DestinationRefused("unix socket", "deliveries never use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def vetted_connection_pool(
    *,
    allow: Sequence[IPNetwork] = (),
    resolve: Resolver | None = None,
    max_connections: int = 100,
    keepalive_expiry: float = 30.0,
) -> httpcore.AsyncConnectionPool:
    """An httpcore pool whose every new connection goes through :class:`VettedNetworkBackend`.

    HTTP/1.1 only, no connection retries, certificates checked against certifi's roots (one
    SSL context per process: httpcore would otherwise build one per connection, reloading the
    CA bundle for ~60 ms of CPU). httpcore never follows redirects, so a 3xx comes back as a
    response, and it reads no proxy variables (``HTTP_PROXY``…), so nothing routes around the
    vetting. A kept-alive connection is reused without resolving again: it was vetted when it
    was made.

    Refusals raise :class:`~core.errors.DestinationRefused` from the request call. Timeouts are
    per request: ``extensions={"timeout": {"connect": …, "read": …, "write": …, "pool": …}}``,
    where ``connect`` covers resolution, vetting and dialling.
    """
    return httpcore.AsyncConnectionPool(
        ssl_context=_certifi_context(),
        max_connections=max_connections,
        keepalive_expiry=keepalive_expiry,
        http1=True,
        http2=False,
        retries=0,
        network_backend=VettedNetworkBackend(allow, resolve),
    )


@functools.cache
def _certifi_context() -> ssl.SSLContext:
    return httpcore.default_ssl_context()
