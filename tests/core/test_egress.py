"""The SSRF guard of outbound deliveries (RELIABILITY.md W5): the refusal table, connect-time
vetting against a canary listener that must see no connection, DNS rebinding, the allow-list
and redirects. Everything runs on 127.0.0.1; host names other than the system's own are served
by fake resolvers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterable
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from types import TracebackType

import httpcore
import pytest

from core.egress import (
    MAX_URL_LENGTH,
    Resolver,
    VettedNetworkBackend,
    check_destination_url,
    is_allowed_address,
    parse_allow_list,
    vetted_connection_pool,
)
from core.errors import DestinationRefused
from core.settings import Settings

LOOPBACK = (IPv4Network("127.0.0.0/8"),)
PUBLIC_IP = "93.184.216.34"
TIMEOUTS = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}


class Listener:
    """A one-response HTTP/1.1 server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> None:
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
        self._response = (
            f"HTTP/1.1 {status} Canary\r\n{extra}Content-Length: 2\r\nConnection: close\r\n\r\nok"
        ).encode()
        self.accepted = 0
        self.request_heads: list[bytes] = []
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port: int = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.close()
        await self._server.wait_closed()
        await asyncio.gather(*self._handlers)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.request_heads.append(head)
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            writer.write(self._response)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@pytest.fixture
async def canary() -> AsyncIterator[Listener]:
    """A listener no refused delivery may ever reach; it answers 200 to those that may."""
    async with Listener() as listener:
        yield listener


async def post(pool: httpcore.AsyncConnectionPool, url: str) -> httpcore.Response:
    return await pool.request(
        "POST",
        url,
        headers=[(b"Content-Type", b"application/json")],
        content=b'{"type": "payment.succeeded"}',
        extensions={"timeout": TIMEOUTS},
    )


def resolving(table: dict[str, list[str]]) -> Resolver:
    """A fake resolver answering from ``table`` and failing like getaddrinfo for other names."""

    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


# --- The refusal table: static checks and address vetting, no network. ---

REFUSED_AT_REGISTRATION = [
    # Svix's URL cases.
    ("https://[::1]:9876", "private address"),
    ("https://1:2@[::1]:9876", "credentials in URL"),
    ("https://[0000:0000:0000:0000:0000:ffff:7f00:0001]:9854", "private address"),
    ("https://[127.0.0.1]", "malformed"),
    ("https://[::1%lo]", "malformed"),
    ("https://[::1%25lo]", "malformed"),
    ("https://::1", "malformed"),
    # Encodings the system resolver reads as 127.0.0.1.
    ("http://0x7f000001/", "private address"),
    ("http://2130706433/", "private address"),
    ("http://017700000001/", "private address"),
    ("http://127.1/", "private address"),
    ("http://127.000.000.001/", "private address"),
    ("http://localhost:8080/", "private address"),
    ("http://localhost./", "private address"),
    ("http://LOCALHOST/", "private address"),
    ("http://hooks.localhost/", "private address"),
    # Addresses wrapping a private one, and the private ranges.
    ("http://[::ffff:127.0.0.1]/", "private address"),
    ("http://[::127.0.0.1]/", "private address"),
    ("http://[64:ff9b::7f00:1]/", "private address"),
    ("http://[2002:7f00:1::1]/", "private address"),
    ("http://169.254.169.254/latest/meta-data/", "private address"),
    ("http://[fd00:ec2::254]/", "private address"),
    ("http://100.64.0.1/", "private address"),
    ("http://192.0.0.8/", "private address"),
    ("http://192.88.99.3/", "private address"),
    ("http://10.0.0.1/", "private address"),
    ("http://172.16.0.1/", "private address"),
    ("http://192.168.1.1/", "private address"),
    ("http://0.0.0.0/", "private address"),
    ("http://[::]/", "private address"),
    ("http://255.255.255.255/", "private address"),
    # Schemes, URL parts and shapes.
    ("file:///etc/passwd", "scheme"),
    ("gopher://127.0.0.1:70/", "scheme"),
    ("ftp://example.com/pub/file", "scheme"),
    ("ws://example.com/socket", "scheme"),
    ("javascript:alert(1)", "scheme"),
    ("//example.com/hooks", "scheme"),
    ("https://@example.com/", "credentials in URL"),
    ("https://token@example.com/", "credentials in URL"),
    ("https://example.com/hooks#section", "fragment"),
    ("https://example.com:0/", "port"),
    ("https://example.com:65536/", "port"),
    ("https://example.com:https/", "port"),
    ("https://example.com/" + "a" * MAX_URL_LENGTH, "too long"),
    ("https:///hooks", "malformed"),
    ("https://exa mple.com/", "malformed"),
    ("https://example.com/\nHost: evil", "malformed"),
    ("https://bücher.example/", "malformed"),
    ("https://under..dots.example/", "malformed"),
    ("https://1.2.3.256/", "malformed"),
    ("http://%6c%6fcalhost/", "malformed"),
    ("http://example.com\\@127.0.0.1/", "credentials in URL"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED_AT_REGISTRATION)
def test_registration_refuses(url: str, reason: str) -> None:
    """Each unsafe or malformed endpoint URL is refused at registration with its reason."""
    with pytest.raises(DestinationRefused) as refused:
        check_destination_url(url)
    assert refused.value.reason == reason


def test_refusal_never_echoes_credentials() -> None:
    """A URL's user info does not reach the error message (it ends up in logs and API answers)."""
    with pytest.raises(DestinationRefused) as refused:
        check_destination_url("https://admin:hunter2@example.com/")
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hooks",
        "HTTPS://Example.COM/hooks?merchant=m_1",
        "http://merchant.example:8080/webhooks",
        "https://hooks.example./",
        "https://xn--bcher-kva.example/",
        "https://8.8.8.8/",
        "https://[2606:4700::1111]:8443/x",
        "https://[64:ff9b::808:808]/",  # NAT64 of 8.8.8.8
        "https://[2002:808:808::1]/",  # 6to4 of 8.8.8.8
    ],
)
def test_registration_accepts_public_destinations(url: str) -> None:
    """Public names and addresses, in any of their usual spellings, are accepted."""
    check_destination_url(url)


def test_registration_honours_the_allow_list() -> None:
    """An allow-listed network and local names pass; other private ranges stay refused."""
    check_destination_url("http://127.0.0.1:8080/", allow=LOOPBACK)
    check_destination_url("http://[::ffff:127.0.0.1]:8080/", allow=LOOPBACK)
    check_destination_url("http://localhost:8080/", allow=LOOPBACK)
    with pytest.raises(DestinationRefused):
        check_destination_url("http://10.0.0.1/", allow=LOOPBACK)


BLOCKED_ADDRESSES = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.127.255.254",
    "192.0.0.8",
    "192.0.0.170",
    "192.0.2.1",
    "192.88.99.3",
    "198.18.0.1",
    "198.19.255.255",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "0.0.0.0",
    "0.1.2.3",
    "::",
    "::1",
    "::ffff:127.0.0.1",
    "0000:0000:0000:0000:0000:ffff:7f00:0001",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "fe80::1",
    "fe80::1%eth0",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "3fff::1",
    "100::1",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::808:808",  # local-use NAT64
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2001::1",  # Teredo
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "5f00::1",  # SRv6
    "4000::1",  # outside 2000::/3
]

PUBLIC_ADDRESSES = [
    "8.8.8.8",
    "1.1.1.1",
    PUBLIC_IP,
    "100.63.255.255",
    "100.128.0.1",
    "172.32.0.1",
    "2606:4700::1111",
    "2001:4860:4860::8888",
    "64:ff9b::808:808",
    "2002:808:808::1",
    "::ffff:8.8.8.8",
]


@pytest.mark.parametrize("address", BLOCKED_ADDRESSES)
def test_blocked_addresses(address: str) -> None:
    """Every non-public range is refused, whatever IPv6 wrapping carries it."""
    assert not is_allowed_address(ip_address(address), ())


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses(address: str) -> None:
    """Public unicast is allowed, including NAT64 and 6to4 forms of a public IPv4 address."""
    assert is_allowed_address(ip_address(address), ())


def test_allow_list_matches_the_canonical_address() -> None:
    """An IPv4 allow-list covers IPv4-mapped spellings, and only the listed networks."""
    assert is_allowed_address(ip_address("127.0.0.1"), LOOPBACK)
    assert is_allowed_address(ip_address("::ffff:127.0.0.1"), LOOPBACK)
    assert not is_allowed_address(ip_address("::1"), LOOPBACK)
    assert not is_allowed_address(ip_address("10.0.0.1"), LOOPBACK)
    assert not is_allowed_address(ip_address("64:ff9b::7f00:1"), LOOPBACK)


def test_parse_allow_list() -> None:
    """Comma-separated CIDRs, blanks ignored; host bits or garbage are configuration errors."""
    assert parse_allow_list("") == ()
    assert parse_allow_list(" 127.0.0.0/8, ::1/128 ,") == (
        ip_network("127.0.0.0/8"),
        ip_network("::1/128"),
    )
    assert parse_allow_list("10.1.2.3") == (ip_network("10.1.2.3/32"),)
    for bad in ("127.0.0.1/8", "localhost", "10.0.0.0/33"):
        with pytest.raises(ValueError):
            parse_allow_list(bad)


# --- End to end through the pool, against a canary on 127.0.0.1. ---

REFUSED_HOSTS = [
    "127.0.0.1",
    "localhost",
    "localhost.",
    "0x7f000001",
    "2130706433",
    "017700000001",
    "127.1",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::1]",
    "1:2@127.0.0.1",
]

# Whether these resolve (and to 127.0.0.1) depends on the system: refused either way.
SYSTEM_SPECIFIC = {"localhost.", "[::1]"}


@pytest.mark.parametrize("host", REFUSED_HOSTS)
async def test_pool_refuses_before_connecting(canary: Listener, host: str) -> None:
    """Each spelling of this machine, resolved by the real system resolver, is refused unsent."""
    async with vetted_connection_pool() as pool:
        with pytest.raises(DestinationRefused):
            await post(pool, f"http://{host}:{canary.port}/hooks")
    assert canary.accepted == 0


@pytest.mark.parametrize("host", [host for host in REFUSED_HOSTS if host not in SYSTEM_SPECIFIC])
async def test_same_hosts_reach_the_canary_when_allow_listed(canary: Listener, host: str) -> None:
    """Control for the table above: allow-listed, these very URLs do reach the canary."""
    # ::1 too, for systems where localhost also resolves to it (the canary is IPv4-only).
    async with vetted_connection_pool(allow=(*LOOPBACK, IPv6Network("::1/128"))) as pool:
        response = await post(pool, f"http://{host}:{canary.port}/hooks")
    assert response.status == 200
    assert canary.accepted == 1


async def test_pool_rejects_other_schemes(canary: Listener) -> None:
    """A stored gopher:// URL never reaches the network either (httpcore refuses the scheme)."""
    async with vetted_connection_pool(allow=LOOPBACK) as pool:
        with pytest.raises(httpcore.UnsupportedProtocol):
            await post(pool, f"gopher://127.0.0.1:{canary.port}/")
    assert canary.accepted == 0


async def test_dns_rebinding_is_caught_at_connect_time(canary: Listener) -> None:
    """A name that answers public at check time and loopback at connect time is refused.

    A registration-time resolve-and-vet passes the name; only the vetting at connect time, on
    the address about to be dialled, stops the delivery.
    """
    answers = iter([[PUBLIC_IP], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    url = f"http://rebind.example:{canary.port}/hooks"
    check_destination_url(url)
    at_registration = await rebinding("rebind.example", canary.port)
    assert all(is_allowed_address(ip_address(answer)) for answer in at_registration)

    async with vetted_connection_pool(resolve=rebinding) as pool:
        with pytest.raises(DestinationRefused) as refused:
            await post(pool, url)
    assert refused.value.reason == "private address"
    assert canary.accepted == 0


async def test_one_private_answer_refuses_the_name(canary: Listener) -> None:
    """A name with a public and a private record is refused, not narrowed to the public one."""
    resolve = resolving({"mixed.example": [PUBLIC_IP, "127.0.0.1"]})
    async with vetted_connection_pool(resolve=resolve) as pool:
        with pytest.raises(DestinationRefused) as refused:
            await post(pool, f"http://mixed.example:{canary.port}/")
    assert refused.value.reason == "private address"
    assert canary.accepted == 0


@pytest.mark.parametrize("answers", [None, [], ["not-an-address"]])
async def test_unresolvable_names_are_refused(canary: Listener, answers: list[str] | None) -> None:
    """A name that fails to resolve, resolves to nothing or to garbage is refused unsent."""
    resolve = resolving({} if answers is None else {"gone.example": answers})
    async with vetted_connection_pool(resolve=resolve, allow=LOOPBACK) as pool:
        with pytest.raises(DestinationRefused) as refused:
            await post(pool, f"http://gone.example:{canary.port}/")
    assert refused.value.reason == "unresolvable"
    assert canary.accepted == 0


async def test_slow_resolution_is_a_connect_timeout() -> None:
    """Resolution counts against the connect timeout and fails as httpcore's ConnectTimeout."""
    never = asyncio.Event()

    async def hanging(host: str, port: int) -> list[str]:
        await never.wait()
        return []

    backend = VettedNetworkBackend(resolve=hanging)
    with pytest.raises(httpcore.ConnectTimeout):
        await backend.connect_tcp("slow.example", 443, timeout=0.05)


async def test_unix_sockets_are_refused() -> None:
    """The backend never opens a Unix socket, whatever a caller configures."""
    with pytest.raises(DestinationRefused) as refused:
        await VettedNetworkBackend().connect_unix_socket("/var/run/docker.sock")
    assert refused.value.reason == "unix socket"


async def test_allow_list_reaches_the_canary(canary: Listener) -> None:
    """With loopback allow-listed, a delivery by name arrives, Host still naming the host."""
    resolve = resolving({"merchant.test": ["127.0.0.1"]})
    async with vetted_connection_pool(allow=LOOPBACK, resolve=resolve) as pool:
        response = await post(pool, f"http://merchant.test:{canary.port}/hooks")
        literal = await post(pool, canary.url)
    assert (response.status, response.content) == (200, b"ok")
    assert literal.status == 200
    assert canary.accepted == 2
    assert f"host: merchant.test:{canary.port}".encode() in canary.request_heads[0].lower()


async def test_falls_back_to_the_next_vetted_address(canary: Listener) -> None:
    """When the first vetted address refuses the connection, the next one is dialled."""
    resolve = resolving({"two.test": ["127.0.0.2", "127.0.0.1"]})
    async with vetted_connection_pool(allow=LOOPBACK, resolve=resolve) as pool:
        response = await post(pool, f"http://two.test:{canary.port}/")
    assert response.status == 200
    assert canary.accepted == 1


async def test_allow_list_is_empty_by_default(canary: Listener) -> None:
    """Out of the box the setting, the pool and the backend all refuse 127.0.0.1."""
    default = Settings.model_fields["delivery_allow_networks"].default
    assert parse_allow_list(default) == ()
    async with vetted_connection_pool() as pool:
        with pytest.raises(DestinationRefused):
            await post(pool, canary.url)
    with pytest.raises(DestinationRefused):
        await VettedNetworkBackend().connect_tcp("127.0.0.1", canary.port)
    assert canary.accepted == 0


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Records what would be dialled and the TLS server name, without any network I/O."""

    def __init__(self) -> None:
        self.dialled: list[tuple[str, int]] = []
        self.server_hostnames: list[str | None] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.dialled.append((host, port))
        return RecordingStream(self)


class RecordingStream(httpcore.AsyncNetworkStream):
    def __init__(self, backend: RecordingBackend) -> None:
        self._backend = backend

    async def start_tls(
        self,
        ssl_context: object,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self._backend.server_hostnames.append(server_hostname)
        raise httpcore.ConnectError("no handshake in this test")

    async def aclose(self) -> None:
        pass


async def test_dials_the_vetted_address_but_verifies_tls_for_the_name() -> None:
    """The vetted IP literal is what gets dialled; SNI and certificates still use the host name."""
    recording = RecordingBackend()
    backend = VettedNetworkBackend(
        resolve=resolving({"merchant.example": [PUBLIC_IP]}), inner=recording
    )
    async with httpcore.AsyncConnectionPool(network_backend=backend) as pool:
        with pytest.raises(httpcore.ConnectError):
            await post(pool, "https://merchant.example/hooks")
    assert recording.dialled == [(PUBLIC_IP, 443)]
    assert recording.server_hostnames == ["merchant.example"]


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_are_returned_not_followed(canary: Listener, status: int) -> None:
    """A 3xx pointing at the canary comes back as is; the canary sees no connection."""
    async with (
        Listener(status, headers=[("Location", canary.url)]) as redirector,
        vetted_connection_pool(allow=LOOPBACK) as pool,
    ):
        response = await post(pool, redirector.url)
    assert response.status == status
    assert (b"Location", canary.url.encode()) in response.headers
    assert redirector.accepted == 1
    assert canary.accepted == 0
