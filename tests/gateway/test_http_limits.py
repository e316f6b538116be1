"""The gateway's HTTP side: /healthz takes a degraded instance out of a balancer, and slow or
silent clients cannot hold its sockets past the open timeout."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import asyncpg
import httpx

from core.settings import Settings
from gateway.server import Gateway
from tests.support import wait_for

OPEN_TIMEOUT = 1.0
SLACK = 1.0


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_healthz_is_200_with_redis(gateway: Gateway) -> None:
    """With Redis reachable the gateway is healthy: 200 and "status": "ok"."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{gateway.port}/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_healthz_is_503_while_redis_is_unreachable(
    gw_settings: Settings, gw_pool: asyncpg.Pool
) -> None:
    """A gateway that cannot reach Redis answers /healthz with 503 and says why, so a balancer
    takes it out; it still serves the check within a second."""
    settings = gw_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{_unused_port()}/0"})
    gateway = Gateway(settings, gw_pool)
    await gateway.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(timeout=1.0) as http:
            started = time.monotonic()
            response = await http.get(f"http://127.0.0.1:{gateway.port}/healthz")
            assert time.monotonic() - started < 1.0
        assert response.status_code == 503
        assert response.json()["status"] == "degraded"
        assert response.json()["redis"] is False
    finally:
        await gateway.stop()


async def test_slow_and_silent_http_clients_are_closed_within_the_open_timeout(
    gw_settings: Settings, gw_pool: asyncpg.Pool
) -> None:
    """Connections that send nothing, or a request a byte at a time, are closed once
    gateway_open_timeout_seconds passes; a normal health check is answered meanwhile."""
    settings = gw_settings.model_copy(update={"gateway_open_timeout_seconds": OPEN_TIMEOUT})
    gateway = Gateway(settings, gw_pool)
    await gateway.start("127.0.0.1", 0)
    peers: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    senders: list[asyncio.Task[None]] = []

    async def trickle(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            for byte in b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"a" * 100:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)  # the attack's pace, not a synchronisation

    async def closed(reader: asyncio.StreamReader, opened: float) -> float:
        async with asyncio.timeout(OPEN_TIMEOUT + SLACK):
            while await reader.read(65536):
                pass
        return time.monotonic() - opened

    try:
        await wait_for(
            lambda: _true(gateway.subscriber.connected), timeout=10, what="Redis connected"
        )
        opened = time.monotonic()
        for n in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            peers.append((reader, writer))
            if n % 2:
                senders.append(asyncio.create_task(trickle(writer)))
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{gateway.port}/healthz")).status_code == 200
        held = await asyncio.gather(*(closed(reader, opened) for reader, _ in peers))
    finally:
        for task in senders:
            task.cancel()
        for _, writer in peers:
            writer.close()
        await gateway.stop()
    assert max(held) < OPEN_TIMEOUT + SLACK


async def _true(value: bool) -> bool:
    return value
