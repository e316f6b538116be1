"""Idle soak (RELIABILITY S8): 1,000 idle authenticated connections held open through several
keepalive rounds; 0 drops, every one still fed afterwards, and at most 100 KiB of gateway RSS
per connection.

The gateway runs as a child process (:class:`GatewayProcess`) so its RSS is its own. The soak
lasts ``SWITCHBOARD_SOAK_SECONDS`` (default 20 s; the scenario's 10 minutes is 600).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

from core.settings import Settings
from tests.gateway.support import (
    ORIGIN,
    GatewayProcess,
    append_events,
    merchant_id,
    token_for,
    ws_url,
)

log = logging.getLogger(__name__)

CONNECTIONS = 1000
MERCHANTS = 50
SOAK_SECONDS = float(os.environ.get("SWITCHBOARD_SOAK_SECONDS", "20"))
PING_INTERVAL_SECONDS = 2.0
PING_TIMEOUT_SECONDS = 10.0
"""Generous: a dead peer is not what this test is about (test_faults covers it), and a busy
2-core machine must not turn a late pong into a false drop."""
MAX_KIB_PER_CONNECTION = 100
OPEN_CONCURRENCY = 50
OPEN_TIMEOUT_SECONDS = 60.0
DELIVERY_TIMEOUT_SECONDS = 30.0
FD_MARGIN = 512


class PingCountingConnection(ClientConnection):
    """A client connection that counts the keepalive pings the server sends (the library
    answers each with a pong by itself)."""

    pings = 0

    def process_event(self, event: Event) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            self.pings += 1
        super().process_event(event)


@dataclass
class IdleClient:
    """One dashboard-like client: authenticates, then only reads."""

    merchant: str
    connection: PingCountingConnection
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the client is live, or once its connection is closed (whichever comes first)."""
    got_event: asyncio.Event = field(default_factory=asyncio.Event)
    live: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        try:
            async for raw in self.connection:
                message = json.loads(raw)
                if "seq" in message:
                    self.events.append(message)
                    self.got_event.set()
                elif message.get("control") == "live":
                    self.live = True
                    self.settled.set()
        except ConnectionClosed:
            pass
        self.settled.set()

    @property
    def closed(self) -> bool:
        return self.reader is not None and self.reader.done()

    def describe_close(self) -> str:
        return f"{self.merchant}: {self.connection.close_code} {self.connection.close_reason!r}"


async def _open(url: str, token: str, merchant: str, opened: list[IdleClient]) -> None:
    connection = await connect(
        url,
        origin=ORIGIN,
        compression=None,
        ping_interval=None,  # a browser never pings: the server's keepalive is under test
        open_timeout=10,
        create_connection=PingCountingConnection,
    )
    assert isinstance(connection, PingCountingConnection)
    client = IdleClient(merchant, connection)
    opened.append(client)
    client.reader = asyncio.create_task(client.read())
    await connection.send(json.dumps({"type": "auth", "token": token}))
    await asyncio.wait_for(client.settled.wait(), timeout=OPEN_TIMEOUT_SECONDS)
    assert client.live, f"closed before going live: {client.describe_close()}"


async def _bounded(jobs: list[Callable[[], Awaitable[None]]], limit: int) -> None:
    """Run ``jobs``, at most ``limit`` at a time; the first failure cancels the rest."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    async with asyncio.TaskGroup() as group:
        for job in jobs:
            group.create_task(one(job))


async def _close_all(clients: list[IdleClient]) -> None:
    async def close(client: IdleClient) -> None:
        await client.connection.close()
        if client.reader is not None:
            await client.reader

    await _bounded([functools.partial(close, c) for c in clients], OPEN_CONCURRENCY)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])  # "VmRSS:    12345 kB"
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def _raise_open_files_limit(needed: int) -> tuple[int, int]:
    """Raise the soft open-files limit to ``needed`` (the gateway child inherits it); skip if
    the hard limit is lower. Returns the limits to restore."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(
                f"the open-files hard limit is {hard}; {CONNECTIONS} connections need {needed}"
                " (ulimit -Hn)"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return soft, hard


@pytest.fixture
def open_files_limit() -> Iterator[None]:
    saved = _raise_open_files_limit(CONNECTIONS + FD_MARGIN)
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


async def _gateway_view(port: int) -> tuple[int, dict[str, float]]:
    """The gateway's own count of connections (``/healthz``) and its disconnect counters."""
    async with httpx.AsyncClient(timeout=10) as http:
        health = (await http.get(f"http://127.0.0.1:{port}/healthz")).json()
        metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    disconnects = {
        line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("switchboard_gateway_disconnects_total{")
    }
    return int(health["connections"]), {k: v for k, v in disconnects.items() if v}


async def _soak(clients: list[IdleClient], seconds: float) -> None:
    """Stay idle for ``seconds``, or until the first connection closes."""
    readers = [c.reader for c in clients if c.reader is not None]
    await asyncio.wait(readers, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)


@pytest.fixture
async def gateway_process(gw_settings: Settings) -> AsyncIterator[GatewayProcess]:
    settings = gw_settings.model_copy(
        update={
            "gateway_ping_interval_seconds": PING_INTERVAL_SECONDS,
            "gateway_ping_timeout_seconds": PING_TIMEOUT_SECONDS,
            "gateway_auth_timeout_seconds": 10.0,
            "gateway_max_connections_per_merchant": max(
                gw_settings.gateway_max_connections_per_merchant, CONNECTIONS // MERCHANTS
            ),
        }
    )
    instance = GatewayProcess(settings)
    try:
        await instance.start()
        yield instance
    finally:
        instance.stop()


@pytest.mark.timeout(SOAK_SECONDS + 240)
async def test_1000_idle_connections_soak_without_drops_within_100_kib_each(
    open_files_limit: None,
    gateway_process: GatewayProcess,
    gw_pool: asyncpg.Pool,
    gw_redis: Redis,
) -> None:
    """1,000 authenticated connections over 50 merchants stay idle through several keepalive
    rounds: none is closed, each then gets its merchant's fresh event and nothing else, and the
    gateway's RSS grows by at most 100 KiB per connection."""
    instance = gateway_process
    assert instance.process is not None and instance.process.pid is not None
    pid, port, settings = instance.process.pid, instance.port, instance.settings
    ttl = SOAK_SECONDS + 600  # no token may expire during the soak
    merchants = [merchant_id() for _ in range(MERCHANTS)]
    owners = [merchants[i % MERCHANTS] for i in range(CONNECTIONS)]
    tokens = {m: token_for(settings, m, ttl=ttl) for m in merchants}
    clients: list[IdleClient] = []
    rss_before = _rss_kib(pid)
    try:
        started = time.monotonic()
        await _bounded(
            [functools.partial(_open, ws_url(port), tokens[m], m, clients) for m in owners],
            OPEN_CONCURRENCY,
        )
        open_seconds = time.monotonic() - started
        assert len(clients) == CONNECTIONS
        connected, disconnects = await _gateway_view(port)
        assert connected == CONNECTIONS and not disconnects, (connected, disconnects)
        rss_open = _rss_kib(pid)

        pings_before = [c.connection.pings for c in clients]
        soak_started = time.monotonic()
        await _soak(clients, SOAK_SECONDS)
        soaked = time.monotonic() - soak_started
        dropped = [c for c in clients if c.closed]
        assert not dropped, (
            f"{len(dropped)} connections dropped after {soaked:.1f} s of idling, e.g."
            f" {[c.describe_close() for c in dropped[:5]]}; gateway log:\n"
            f"{instance.process.log_tail()}"
        )
        rounds = [
            c.connection.pings - before for c, before in zip(clients, pings_before, strict=True)
        ]
        rss_soaked = _rss_kib(pid)
        connected, disconnects = await _gateway_view(port)
        assert connected == CONNECTIONS and not disconnects, (connected, disconnects)
        # Each connection was pinged (and answered, or it would have been closed) every
        # interval; half of that leaves room for a loaded machine.
        expected_rounds = max(1, math.floor(SOAK_SECONDS / PING_INTERVAL_SECONDS / 2))
        assert min(rounds) >= expected_rounds, (min(rounds), expected_rounds)

        delivered_started = time.monotonic()
        await asyncio.gather(*(append_events(gw_pool, gw_redis, m, 1) for m in merchants))
        try:
            async with asyncio.timeout(DELIVERY_TIMEOUT_SECONDS):
                for client in clients:
                    await client.got_event.wait()
        except TimeoutError:
            missing = sum(not c.got_event.is_set() for c in clients)
            raise AssertionError(f"{missing} clients got no event") from None
        delivery_seconds = time.monotonic() - delivered_started
        rss_after = _rss_kib(pid)
        assert not [c for c in clients if c.closed]
        await _close_all(clients)
        for client in clients:  # final: nothing else arrived before the close
            assert [(e["merchant_id"], e["seq"]) for e in client.events] == [
                (client.merchant, 1)
            ], (client.merchant, client.events)
            assert client.events[0]["data"]["canary"] == client.merchant

        growth = max(rss_open, rss_soaked) - rss_before
        kib_per_connection = growth / CONNECTIONS
        log.info(
            "idle soak: %d connections over %d merchants opened in %.1f s; soaked %.1f s with"
            " ping interval %.1f s: %d-%d ping rounds per connection; 0 drops; events delivered"
            " to all in %.2f s",
            CONNECTIONS,
            MERCHANTS,
            open_seconds,
            soaked,
            PING_INTERVAL_SECONDS,
            min(rounds),
            max(rounds),
            delivery_seconds,
        )
        log.info(
            "idle soak: gateway RSS before %d KiB, all open %d KiB, after the soak %d KiB,"
            " after delivery %d KiB; %.1f KiB per connection (limit %d); soak growth %+d KiB",
            rss_before,
            rss_open,
            rss_soaked,
            rss_after,
            kib_per_connection,
            MAX_KIB_PER_CONNECTION,
            rss_soaked - rss_open,
        )
        assert kib_per_connection <= MAX_KIB_PER_CONNECTION
    finally:
        for client in clients:
            if client.reader is not None and not client.reader.done():
                client.connection.transport.abort()
        readers = [c.reader for c in clients if c.reader is not None]
        if readers:
            await asyncio.wait(readers, timeout=15)
