"""The api under hostile connections: slow and oversized heads and bodies, pinned connections.

The api is served as ``switchboard api`` serves it (``api.app.server_options``): in-process for
timing tests, as a child process where its memory is measured. Clients are raw sockets, so each
test controls exactly which bytes arrive when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from api.app import create_app, server_options
from api.limits import LINGER_SECONDS
from core.settings import Settings
from tests.support import wait_for

REPO = Path(__file__).resolve().parents[2]
# Short limits so that every bound is crossed within a test's few seconds.
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
SLACK = 1.0
"""Scheduling slack on a shared 2-core machine, added to every asserted bound."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def limited(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "header_timeout_seconds": HEADER_TIMEOUT,
            "body_timeout_seconds": BODY_TIMEOUT,
            "max_header_bytes": 4096,
            "api_max_connections": 40,
        }
    )


@contextlib.asynccontextmanager
async def guarded_api(settings: Settings) -> AsyncIterator[int]:
    """The real api with the real server options, in this process; yields its port."""
    port = _free_port()
    options = {**server_options(settings), "log_level": "warning"}
    options.pop("loop")  # this test's event loop serves it
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, **options)
    )
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            task.result()
            raise AssertionError("the api exited during startup")
        return server.started

    try:
        await wait_for(started, timeout=20, what="the api to start")
        yield port
    finally:
        server.should_exit = True
        await task


class _Recorder(asyncio.Protocol):
    """Keeps every byte the server sends, even when the connection then ends with a reset
    (asyncio's StreamReader raises the reset before handing over what it had buffered)."""

    def __init__(self) -> None:
        self.received = b""
        self.closed = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        self.closed.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class Peer:
    """A raw client connection that sends exactly what it is told."""

    def __init__(self, transport: asyncio.Transport, recorder: _Recorder) -> None:
        self.transport = transport
        self.recorder = recorder
        self.opened = time.monotonic()

    @classmethod
    async def connect(cls, port: int) -> Peer:
        transport, recorder = await asyncio.get_running_loop().create_connection(
            _Recorder, "127.0.0.1", port
        )
        return cls(transport, recorder)

    async def send(self, data: bytes) -> None:
        if self.recorder.closed.is_set():
            raise ConnectionResetError("the server closed the connection")
        self.transport.write(data)
        await self.recorder.writable.wait()

    async def until_closed(self, within: float) -> tuple[bytes, float]:
        """Everything the server sends until it closes; fails if it keeps the connection."""
        async with asyncio.timeout(within):
            await self.recorder.closed.wait()
        return self.recorder.received, time.monotonic() - self.opened

    def close(self) -> None:
        self.transport.close()


async def trickle(peer: Peer, data: bytes, *, every: float) -> None:
    """Send ``data`` one byte at a time (a slowloris client) until it is sent or refused."""
    with contextlib.suppress(ConnectionError):
        for byte in data:
            await peer.send(bytes([byte]))
            await asyncio.sleep(every)  # the attack's pace, not a synchronisation


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:80]
    return int(response[9:12])


async def test_slowloris_heads_are_closed_within_the_header_timeout(limited: Settings) -> None:
    """Connections that never finish their request head (silent, or one byte every 0.2 s, on
    the ingress and on operator routes) are answered 408 and closed once the header timeout
    passes, while a well-behaved client is served throughout."""
    head = b"POST /v1/partners HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer x\r\nX-Pad: "
    async with guarded_api(limited) as port:
        silent = [await Peer.connect(port) for _ in range(10)]
        slow = [await Peer.connect(port) for _ in range(10)]
        ingress = [await Peer.connect(port) for _ in range(5)]
        senders = [asyncio.create_task(trickle(p, head + b"a" * 100, every=0.2)) for p in slow]
        senders += [
            asyncio.create_task(trickle(p, b"POST /webhooks/p1 HTTP/1.1\r\nX: " * 9, every=0.2))
            for p in ingress
        ]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                assert (await client.get("/healthz")).status_code == 200
            outcomes = await asyncio.gather(
                *(p.until_closed(HEADER_TIMEOUT + SLACK) for p in silent + slow + ingress)
            )
        finally:
            for task in senders:
                task.cancel()
            for peer in silent + slow + ingress:
                peer.close()
    held = [elapsed for _, elapsed in outcomes]
    logging.getLogger(__name__).info("slowloris heads held for at most %.2f s", max(held))
    assert all(status_of(response) == 408 for response, _ in outcomes)
    assert all(HEADER_TIMEOUT - 0.1 < elapsed < HEADER_TIMEOUT + SLACK for elapsed in held)


async def test_a_request_head_over_the_limit_is_431_and_closed(limited: Settings) -> None:
    """A head larger than max_header_bytes is refused with 431, whether it is still arriving or
    arrived whole in one read."""
    async with guarded_api(limited) as port:
        unfinished = await Peer.connect(port)
        await unfinished.send(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 20_000)
        whole = await Peer.connect(port)
        await whole.send(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 5_000 + b"\r\n\r\n")
        for peer in (unfinished, whole):
            response, _ = await peer.until_closed(SLACK)
            peer.close()
            assert status_of(response) == 431
            assert b"application/problem+json" in response


@pytest.mark.parametrize("path", ["/v1/partners", "/webhooks/p-limits"])
async def test_a_stalled_body_is_408_and_the_connection_closed(
    limited: Settings, path: str
) -> None:
    """A body that stops arriving gets 408 once the body timeout passes, on operator routes as
    on the ingress, and the connection is closed soon after (not held for minutes)."""
    async with guarded_api(limited) as port:
        peers = [await Peer.connect(port) for _ in range(20)]
        try:
            for peer in peers:
                await peer.send(
                    f"POST {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer sb_dev_admin_key"
                    "\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
                )
            bound = BODY_TIMEOUT + LINGER_SECONDS + SLACK
            outcomes = await asyncio.gather(*(p.until_closed(bound) for p in peers))
        finally:
            for peer in peers:
                peer.close()
    assert {status_of(response) for response, _ in outcomes} == {408}
    assert max(elapsed for _, elapsed in outcomes) < bound


async def test_a_body_trickled_forever_is_cut_off(limited: Settings) -> None:
    """A client that keeps sending a byte at a time cannot stretch the body timeout: 408, then
    the connection closes within the linger bound although bytes keep coming."""
    async with guarded_api(limited) as port:
        peer = await Peer.connect(port)
        await peer.send(
            b"POST /v1/partners HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer sb_dev_admin_key\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        )
        sender = asyncio.create_task(trickle(peer, b"x" * 100_000, every=0.05))
        try:
            response, elapsed = await peer.until_closed(BODY_TIMEOUT + LINGER_SECONDS + SLACK)
        finally:
            sender.cancel()
            peer.close()
    assert status_of(response) == 408
    assert elapsed < BODY_TIMEOUT + LINGER_SECONDS + SLACK


async def test_connections_beyond_the_limit_are_refused_at_once(limited: Settings) -> None:
    """With api_max_connections held open by idle clients, a further connection is answered
    503 at once; once the idle ones time out, the api serves again."""
    async with guarded_api(limited) as port:
        held = [await Peer.connect(port) for _ in range(limited.api_max_connections)]
        try:
            # All of them are counted as soon as the server has accepted them.
            extra = await Peer.connect(port)
            response, elapsed = await extra.until_closed(SLACK)
            extra.close()
            assert status_of(response) == 503
            assert elapsed < SLACK
            await asyncio.gather(*(p.until_closed(HEADER_TIMEOUT + SLACK) for p in held))
        finally:
            for peer in held:
                peer.close()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200


async def test_a_client_leaving_mid_body_is_one_info_line(
    limited: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that disconnects halfway through its body is logged once, at info, without a
    traceback, and nothing is logged as an error."""
    caplog.set_level(logging.INFO)
    async with guarded_api(limited) as port:
        for path in ("/webhooks/p-leaving", "/v1/partners"):
            peer = await Peer.connect(port)
            await peer.send(
                f"POST {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer sb_dev_admin_key\r\n"
                "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n".encode()
                + b"x" * 2000
            )
            peer.transport.abort()

        async def both_logged() -> bool:
            return sum("went away" in r.getMessage() for r in caplog.records) >= 2

        await wait_for(both_logged, timeout=5, what="the disconnects to be logged")
    leaving = [r for r in caplog.records if "went away" in r.getMessage()]
    assert [r.levelno for r in leaving] == [logging.INFO, logging.INFO]
    assert all(r.exc_info is None for r in leaving)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# -- a big body against the api as its own process ------------------------------------------


@contextlib.asynccontextmanager
async def api_process(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[int, int]]:
    """``switchboard api`` as a child process; yields its port and pid."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SWITCHBOARD_ENVIRONMENT": "test",
        "SWITCHBOARD_DATABASE_URL": settings.database_url,
        "SWITCHBOARD_REDIS_URL": settings.redis_url,
        "SWITCHBOARD_API_HOST": "127.0.0.1",
        "SWITCHBOARD_API_PORT": str(port),
        "SWITCHBOARD_LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "api.log").open("wb")
    child = subprocess.Popen(
        [sys.executable, "-c", "from cli.main import app; app()", "api"],
        cwd=tmp_path,  # no .env of the repository
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    async def healthy() -> bool:
        assert child.poll() is None, (tmp_path / "api.log").read_text()
        try:
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{port}/healthz")
        except httpx.TransportError:
            return False
        return response.status_code == 200

    try:
        await wait_for(healthy, timeout=30, interval=0.1, what="the api process to start")
        yield port, child.pid
    finally:
        child.terminate()
        try:
            await asyncio.to_thread(child.wait, 15)
        except subprocess.TimeoutExpired:
            child.kill()
            await asyncio.to_thread(child.wait)
        log.close()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def stream_until_answered(port: int, head: bytes, total: int) -> tuple[bytes, int, float]:
    """Send ``head`` then up to ``total`` body bytes while reading; stop when the server answers
    or closes. Returns the answer, the body bytes sent and the seconds it took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    sent = 0
    chunk = b"x" * 65536

    async def send_body() -> None:
        nonlocal sent
        writer.write(head)
        with contextlib.suppress(ConnectionError):
            while sent < total:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)

    sender = asyncio.create_task(send_body())
    try:
        async with asyncio.timeout(10):
            answer = await reader.read(65536)
    finally:
        sender.cancel()
        writer.transport.abort()
    return answer, sent, time.monotonic() - started


async def test_a_50_mib_body_without_a_key_is_refused_unread(
    settings: Settings, tmp_path: Path
) -> None:
    """50 MiB streamed to POST /v1/partners without a key gets 401 at once, with a key but a
    declared length over the cap 413 at once, chunked over the cap 413 after the cap; the api
    process's memory grows by less than a few MiB."""
    mib = 1024 * 1024
    async with api_process(settings, tmp_path) as (port, pid):
        before = rss_bytes(pid)
        key = b"Authorization: Bearer sb_dev_admin_key\r\n"
        cases: list[tuple[bytes, int]] = [
            (b"Content-Length: %d\r\n" % (50 * mib), 401),
            (key + b"Content-Length: %d\r\n" % (50 * mib), 413),
            (key + b"Transfer-Encoding: chunked\r\n", 413),
        ]
        for headers, expected in cases:
            head = (
                b"POST /v1/partners HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
                + headers
                + b"\r\n"
            )
            body_head = b"%x\r\n" % (50 * mib) if b"chunked" in headers else b""
            answer, sent, elapsed = await stream_until_answered(port, head + body_head, 50 * mib)
            logging.getLogger(__name__).info(
                "%d after %.3f s with %.1f MiB sent", expected, elapsed, sent / mib
            )
            assert status_of(answer) == expected, answer[:200]
            assert elapsed < 2 * SLACK
            # The server read (and dropped) at most its cap and the linger allowance.
            assert sent < 50 * mib
        grown = rss_bytes(pid) - before
    logging.getLogger(__name__).info("api RSS grew by %.2f MiB", grown / mib)
    assert grown < 8 * mib, f"the api grew by {grown / mib:.1f} MiB"
