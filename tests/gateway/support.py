"""Gateway test harness: in-process and subprocess gateways, a TCP balancer, event writers and a
recording WebSocket client. Everything runs against the session's real Postgres and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from playwright.async_api import Browser, Page, async_playwright
from redis.asyncio import Redis
from temporalio.client import Client
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from core import exchange, feeds
from core.contracts import merchant_channel
from core.dashboard_tokens import issue_dashboard_token, issue_topic_token
from core.feeds import Topic
from core.merchant_events import encode_merchant_event
from core.settings import Settings
from devstack.ports import free_port
from devstack.processes import REPO, SwitchboardProcess, spawn_switchboard
from gateway.server import Gateway
from tests.support import isolated_settings, running_api, running_worker, stores, wait_for

ROOT = REPO
ORIGIN = Origin("http://127.0.0.1:8400")


def merchant_id() -> str:
    return f"m_{uuid.uuid4().hex[:12]}"


async def add_merchant(pool: asyncpg.Pool) -> str:
    """A merchant of its own: a bare row, named by its id."""
    merchant = merchant_id()
    await pool.execute("INSERT INTO merchants (id, name) VALUES ($1, $1)", merchant)
    return merchant


async def add_exchange_request(pool: asyncpg.Pool, merchant: str) -> asyncpg.Record:
    """A new exchange request of ``merchant`` (created → pending) through :mod:`core.exchange`,
    its feed events appended but not published."""
    async with pool.acquire() as conn:
        return await exchange.create(
            conn,
            merchant_id=merchant,
            customer_id="c-1",
            from_amount=10_000,
            from_currency="EUR",
            to_currency="USDT",
            quote=None,
            actor="tests",
        )


async def topic_head(pool: asyncpg.Pool, topic: Topic) -> int:
    """``topic``'s latest committed seq, from its own source."""
    return await topic.source.head(pool, topic)


def token_for(
    settings: Settings, merchant: str, *, ttl: float = 600, now: float | None = None
) -> str:
    token, _ = issue_dashboard_token(
        settings.dashboard_token_secret.get_secret_value(),
        merchant,
        ttl_seconds=ttl,
        now=time.time() if now is None else now,
    )
    return token


def topic_token(settings: Settings, topic: Topic, *, ttl: float = 600) -> str:
    token, _ = issue_topic_token(
        settings.dashboard_token_secret.get_secret_value(), topic, ttl_seconds=ttl, now=time.time()
    )
    return token


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings, pool: asyncpg.Pool, port: int = 0
) -> AsyncIterator[Gateway]:
    """A gateway in this process on 127.0.0.1, stopped (with 1012) afterwards."""
    gateway = Gateway(settings, pool)
    await gateway.start("127.0.0.1", port)
    try:
        await wait_for(_redis_connected(gateway), timeout=10, what="the gateway to reach Redis")
        yield gateway
    finally:
        await gateway.stop()


@dataclass(frozen=True)
class PageServers:
    """The api serving the pages, a client of it, and a gateway accepting the pages' Origin."""

    api_url: str
    http: httpx.AsyncClient
    gateway: Gateway
    gateway_settings: Settings


async def serve_pages(
    exits: contextlib.AsyncExitStack,
    settings: Settings,
    pool: asyncpg.Pool,
    gateway_port: int,
    *,
    admin: bool = True,
    timeout: float = 10,
) -> PageServers:
    """The api on ``settings`` and a gateway on ``gateway_port`` that accepts the api's Origin
    (the pages are served by the api, as the dashboard is), with a client of the api sending
    the admin key unless ``admin`` is False; all stopped by ``exits``."""
    api_url = await exits.enter_async_context(running_api(settings))
    gateway_settings = settings.model_copy(update={"gateway_allowed_origins": [api_url]})
    gateway = await exits.enter_async_context(running_gateway(gateway_settings, pool, gateway_port))
    headers = (
        {"authorization": f"Bearer {settings.admin_api_key.get_secret_value()}"} if admin else {}
    )
    http = await exits.enter_async_context(
        httpx.AsyncClient(base_url=api_url, headers=headers, timeout=timeout)
    )
    return PageServers(api_url, http, gateway, gateway_settings)


async def pages_with_worker(
    exits: contextlib.AsyncExitStack,
    settings: Settings,
    postgres_admin_url: str,
    temporal: Client,
    *,
    admin: bool = True,
    timeout: float = 30,
) -> tuple[Settings, asyncpg.Pool, PageServers]:
    """On a database of its own: the api and a gateway (:func:`serve_pages`) and a worker on
    ``temporal``; its settings, pool and servers, all stopped by ``exits``."""
    gateway_port = free_port()
    isolated = await isolated_settings(
        settings, postgres_admin_url, gateway_public_url=f"ws://127.0.0.1:{gateway_port}"
    )
    pool, redis = await exits.enter_async_context(stores(isolated))
    servers = await serve_pages(exits, isolated, pool, gateway_port, admin=admin, timeout=timeout)
    await exits.enter_async_context(running_worker(isolated, temporal, pool, redis))
    return isolated, pool, servers


def _redis_connected(gateway: Gateway):
    async def probe() -> bool:
        return gateway.subscriber.connected

    return probe


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/ws"


async def append_events(
    pool: asyncpg.Pool,
    redis: Redis | None,
    merchant: str,
    count: int,
    *,
    publish_order: list[int] | None = None,
    data: dict[str, Any] | None = None,
) -> list[asyncpg.Record]:
    """Append ``count`` events for ``merchant`` the way the ledger does (next seqs, one
    transaction), then publish them like the publish activity (unless ``redis`` is None).
    ``publish_order`` lists indexes to publish, in that order (default: all, in seq order)."""
    async with pool.acquire() as conn, conn.transaction():
        last = await conn.fetchval(
            "INSERT INTO merchants (id, last_seq) VALUES ($1, $2) ON CONFLICT (id)"
            " DO UPDATE SET last_seq = merchants.last_seq + $2 RETURNING last_seq",
            merchant,
            count,
        )
        rows = await conn.fetch(
            "INSERT INTO events (merchant_id, seq, event_id, type, data)"
            " SELECT $1, $2::bigint + g, 'evt_' || md5(random()::text || g), 'payment.succeeded',"
            " $4::jsonb || jsonb_build_object('canary', $1::text, 'n', g)"
            " FROM generate_series(1, $3::int) AS g"
            " RETURNING merchant_id, seq, event_id, type, data, created_at",
            merchant,
            last - count,
            count,
            data or {"amount": 100, "currency": "EUR"},
        )
    rows = sorted(rows, key=lambda r: r["seq"])
    if redis is not None:
        order = publish_order if publish_order is not None else range(len(rows))
        async with redis.pipeline(transaction=False) as pipe:
            for index in order:
                pipe.publish(merchant_channel(merchant), encode_merchant_event(rows[index]))
            await pipe.execute()
    return rows


async def append_topic_events(
    pool: asyncpg.Pool, redis: Redis | None, topic: Topic, count: int
) -> list[asyncpg.Record]:
    """Append ``count`` canary events to a desk or request topic in one transaction
    (:func:`core.feeds.append`), then publish them (unless ``redis`` is None)."""
    run = uuid.uuid4().hex[:8]
    async with pool.acquire() as conn, conn.transaction():
        rows = [
            (
                await feeds.append(
                    conn, "canary", {topic: {"canary": topic.key, "n": n}}, event_id=f"{run}.{n}"
                )
            )[0]
            for n in range(count)
        ]
    if redis is not None:
        assert await feeds.publish_events(pool, redis, [row["event_id"] for row in rows]) == count
    return rows


async def publish_rows(redis: Redis, rows: list[asyncpg.Record]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for row in rows:
            pipe.publish(merchant_channel(row["merchant_id"]), encode_merchant_event(row))
        await pipe.execute()


@dataclass
class Recorder:
    """A dashboard-like client: authenticates, records every event and control message."""

    url: str
    token: str
    since_seq: int | None = None
    origin: Origin | None = ORIGIN
    events: list[dict[str, Any]] = field(default_factory=list)
    controls: list[dict[str, Any]] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    close_code: int | None = None
    connection: ClientConnection | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def seqs(self) -> list[int]:
        return [event["seq"] for event in self.events]

    @property
    def last_seq(self) -> int | None:
        return self.events[-1]["seq"] if self.events else self.since_seq

    @property
    def live(self) -> bool:
        return any(c.get("control") == "live" for c in self.controls)

    async def start(self) -> Recorder:
        self.connection = await connect(
            self.url,
            origin=self.origin,
            compression=None,
            max_size=None,
            open_timeout=10,
        )
        await self.connection.send(
            json.dumps({"type": "auth", "token": self.token, "since_seq": self.since_seq})
        )
        self._task = asyncio.create_task(self._read(self.connection))
        return self

    async def _read(self, connection: ClientConnection) -> None:
        try:
            async for raw in connection:
                message = json.loads(raw)
                if "seq" in message:
                    self.events.append(message)
                    self.received_at.append(time.time())
                else:
                    self.controls.append(message)
        except ConnectionClosed:
            pass
        self.close_code = connection.close_code if connection.close_code is not None else 1006

    async def wait_live(self, timeout: float = 10) -> None:
        async def probe() -> bool:
            if self.close_code is not None:
                raise AssertionError(f"closed with {self.close_code} before going live")
            return self.live

        await wait_for(probe, timeout=timeout, what="the client to go live")

    async def wait_seq(self, seq: int, timeout: float = 20) -> None:
        async def probe() -> bool:
            return bool(self.events) and self.events[-1]["seq"] >= seq

        await wait_for(probe, timeout=timeout, what=f"seq {seq} (have {self.last_seq})")

    async def wait_closed(self, timeout: float = 15) -> int:
        async def probe() -> int | None:
            return self.close_code

        return await wait_for(probe, timeout=timeout, what="the connection to close")

    async def stop(self) -> None:
        if self.connection is not None:
            await self.connection.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def assert_gapless(self, first: int, last: int) -> None:
        """Every seq from ``first`` to ``last`` exactly once after dropping repeats, in order."""
        kept: list[int] = []
        for seq in self.seqs:
            if kept and seq <= kept[-1]:
                assert seq in kept, f"unknown seq {seq} arrived out of order"
                continue
            kept.append(seq)
        assert kept == list(range(first, last + 1)), _describe_gap(kept, first, last)


def _describe_gap(kept: list[int], first: int, last: int) -> str:
    missing = sorted(set(range(first, last + 1)) - set(kept))
    return f"missing {len(missing)} seqs (first {missing[:10]}), got {len(kept)}"


async def recorder(settings: Settings, port: int, merchant: str, **options: Any) -> Recorder:
    return await Recorder(ws_url(port), token_for(settings, merchant), **options).start()


async def launch_chromium(exits: contextlib.AsyncExitStack, chromium: str) -> Browser:
    """Headless Chromium from ``chromium``, closed by ``exits``."""
    playwright = await exits.enter_async_context(async_playwright())
    browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
    exits.push_async_callback(browser.close)
    return browser


async def open_page(browser: Browser, url: str, errors: list[str]) -> Page:
    """A tab of its own (its own context, so its own session storage) opening ``url``; the page
    errors it reports go to ``errors``."""
    page = await browser.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(url)
    return page


async def sign_in(page: Page, api_key: str) -> None:
    """Sign a dashboard or desk page in with ``api_key`` and wait until its feed is live."""
    await page.fill("#api-key", api_key)
    await page.click("button[type=submit]")
    await page.wait_for_function("() => window.switchboard.connState() === 'live'", timeout=15_000)


async def signed_in_page(
    exits: contextlib.AsyncExitStack, chromium: str, api_url: str, settings: Settings, merchant: str
) -> tuple[Page, list[str]]:
    """A headless Chromium page showing ``merchant``'s dashboard, signed in with the admin key
    and live; also the page errors it reports."""
    browser = await launch_chromium(exits, chromium)
    errors: list[str] = []
    page = await open_page(browser, f"{api_url}/dashboard?merchant={merchant}", errors)
    await sign_in(page, settings.admin_api_key.get_secret_value())
    return page, errors


# -- gateway subprocesses and the balancer --------------------------------------------------


class GatewayProcess:
    """The gateway as a child process on ``port`` (its log in a temp file, removed on stop)."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        self.port = port or free_port()
        self.settings = settings.model_copy(
            update={"gateway_port": self.port, "log_level": "WARNING"}
        )
        self.process: SwitchboardProcess | None = None
        fd, log = tempfile.mkstemp(prefix="switchboard-gateway-", suffix=".log")
        os.close(fd)
        self.log = Path(log)

    async def start(self) -> GatewayProcess:
        self.process = spawn_switchboard("gateway", self.settings, self.log, cwd=ROOT)
        await self.process.wait_ready_async(timeout=20)
        return self

    def signal(self, signum: int) -> None:
        assert self.process is not None and self.process.pid is not None
        os.kill(self.process.pid, signum)

    async def wait_exit(self, timeout: float = 15) -> int:
        assert self.process is not None
        process = self.process

        async def exited() -> int | None:
            code = process.poll()
            return None if code is None else code + 1000  # truthy even for 0

        return await wait_for(exited, timeout=timeout, what="the gateway to exit") - 1000

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
        self.log.unlink(missing_ok=True)


class TcpBalancer:
    """A plain round-robin TCP proxy (no stickiness): each new connection goes to the next
    backend that accepts it."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = 0
        self._next = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TcpBalancer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(len(self.backends)):
            port = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
                task = asyncio.create_task(_pipe(source, sink))
                self._pipes.add(task)
                task.add_done_callback(self._pipes.discard)
            return
        writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
