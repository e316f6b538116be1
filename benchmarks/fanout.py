"""Fan-out benchmark: the Switchboard gateway against python-socketio and Node Socket.IO.

Shapes: 1,000 clients over 500 merchants (2 each) and 100 clients on one merchant, spread over
``CLIENT_PROCESSES`` client processes (``benchmarks/fanout_clients.py``). The benchmark process
publishes events to Redis for random merchants, open loop, in 5 ms batches, each carrying its
publish time. Per system and shape, in one server process's life:

1. warm-up: one event per merchant until a round arrives complete;
2. saturation: the offered rate steps up (x1.5, then x1.25 around the last run's saturation)
   for ``step_seconds`` each until the clients have not received everything
   ``grace`` after a step ends. Saturation is the most deliveries/s received *during* any step;
   every step is drained completely (the clients got every event) before the next;
3. latency: ``latency_seconds`` at half that saturation rate, drained, p50/p99 of publish→client.

Each system gets the same publisher and payload in its own wire format: Switchboard's
per-merchant channels (the events are also written to Postgres, outside the timing, so a gap
could be filled as in production), python-socketio's ``socketio`` channel in the JSON
``AsyncRedisManager.emit`` writes, and @socket.io/redis-adapter's per-room channel in its
MessagePack format (what ``@socket.io/redis-emitter`` writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

from benchmarks.report import Row, Section, Target, _number, _series, _table, _times
from benchmarks.stack import HOST, REPO
from benchmarks.stats import median, percentile, ratio
from core.contracts import merchant_channel
from core.dashboard_tokens import issue_dashboard_token
from core.db import migrate
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from devstack.processes import (
    ChildProcess,
    ServiceError,
    SwitchboardProcess,
    standalone_settings,
)
from devstack.redis import EmbeddedRedis

__all__ = ["FanoutPlan", "fanout_stores", "measure_fanout"]

SECRET = "bench-dashboard-secret-" + uuid.uuid4().hex
BATCH_SECONDS = 0.005
CLIENT_PROCESSES = 3
NODE_DIR = REPO / "benchmarks" / "node"
SYSTEMS = ("switchboard", "socketio", "node")
LABELS = {"switchboard": "Switchboard", "socketio": "python-socketio", "node": "Node Socket.IO"}
SHAPES = {"500x2": (500, 2), "1x100": (1, 100)}
SHAPE_LABELS = {"500x2": "1,000 clients, 500 merchants x 2", "1x100": "100 clients, 1 merchant"}
START_RATE = {"500x2": 2_000.0, "1x100": 200.0}
"""First offered rate (events/s) of the first run's saturation search."""
MAX_RATE = {"500x2": 150_000.0, "1x100": 5_000.0}
MAX_STEPS = 12
DRAIN_TIMEOUT = 30.0
PROFILE_ENV = "SWITCHBOARD_BENCH_PROFILE_DIR"
"""Set to a directory to run the gateway under cProfile (``python -m pstats`` reads the files)."""


@dataclass(frozen=True)
class FanoutPlan:
    repeats: int
    step_seconds: float
    latency_seconds: float


QUICK_FANOUT = FanoutPlan(repeats=1, step_seconds=1.0, latency_seconds=2.0)
FULL_FANOUT = FanoutPlan(repeats=3, step_seconds=2.0, latency_seconds=4.0)


@dataclass
class Run:
    """One system, one shape, one server lifetime."""

    events_in: float
    """Events/s fanned out at saturation (deliveries/s ÷ clients per merchant)."""
    deliveries: float
    """Deliveries/s the clients received at saturation."""
    sustained: float
    """Highest offered events/s that was delivered completely within the grace."""
    half_rate: float
    p50_ms: float
    p99_ms: float
    server_cpu: float
    """Cores the server used during the saturating step."""
    client_cpu: float
    """Cores all client processes used during the saturating step."""
    steps: int
    lost: int = 0


@dataclass
class Window:
    deliveries: int
    seconds: float
    cpu: float
    latencies: list[float] = field(default_factory=list)


# -- wire formats ---------------------------------------------------------------------------


def _mp_str(text: str) -> bytes:
    raw = text.encode()
    if len(raw) < 32:
        return bytes([0xA0 | len(raw)]) + raw
    return b"\xd9" + bytes([len(raw)]) + raw


def _mp(value: Any) -> bytes:
    """MessagePack for the few shapes the adapter's messages use (ints as uint32)."""
    if value is None:
        return b"\xc0"
    if isinstance(value, bool):
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        return b"\xce" + struct.pack(">I", value)
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, str):
        return _mp_str(value)
    if isinstance(value, list):
        return bytes([0x90 | len(value)]) + b"".join(_mp(v) for v in value)
    if isinstance(value, dict):
        return bytes([0x80 | len(value)]) + b"".join(_mp(k) + _mp(v) for k, v in value.items())
    raise TypeError(value)


class Formats:
    """Each system's Redis channel and message for one merchant's event, built from templates
    (the publisher must cost far less than the servers it feeds)."""

    SEQ, T = 0xDEADBEEF, 1234.5678

    def __init__(self, kind: str, merchant: str) -> None:
        self.kind = kind
        event = {
            "merchant_id": merchant,
            "seq": self.SEQ,
            "event_id": "evt_" + "9" * 10,
            "type": "payment.succeeded",
            "data": {"amount": 1250, "currency": "EUR", "t": self.T},
            "occurred_at": "2026-11-22T00:00:00+00:00",
        }
        if kind == "node":
            self.channel = f"socket.io#/#{merchant}#".encode()
            message = [
                "bench-publisher",
                {"type": 2, "data": ["event", event], "nsp": "/"},
                {"rooms": [merchant], "except": [], "flags": {}},
            ]
            encoded = _mp(message)
            seq_at = encoded.index(_mp(self.SEQ))
            id_at = encoded.index(_mp("evt_" + "9" * 10))
            t_at = encoded.index(_mp(self.T))
            self.parts = (encoded[:seq_at], encoded[seq_at + 5 : id_at], encoded[id_at + 15 : t_at])
            self.tail = encoded[t_at + 9 :]
            return
        text = json.dumps(event, separators=(",", ":"))
        if kind == "socketio":
            self.channel = b"socketio"
            text = json.dumps(
                {
                    "method": "emit",
                    "event": "event",
                    "data": [event],
                    "binary": False,
                    "namespace": "/",
                    "room": merchant,
                    "skip_sid": None,
                    "callback": None,
                    "host_id": "bench-publisher",
                },
                separators=(",", ":"),
            )
        else:
            self.channel = merchant_channel(merchant).encode()
        text = text.replace(str(self.SEQ), "%d").replace("9" * 10, "%010d")
        self.template = text.replace(str(self.T), "%.6f").encode()

    def message(self, seq: int, now: float) -> bytes:
        if self.kind == "node":
            head, mid, before_t = self.parts
            return b"".join(
                (
                    head,
                    struct.pack(">BI", 0xCE, seq),
                    mid,
                    _mp_str(f"evt_{seq:010d}"),
                    before_t,
                    struct.pack(">Bd", 0xCB, now),
                    self.tail,
                )
            )
        return self.template % (seq, seq, now)


# -- processes ------------------------------------------------------------------------------


def node_available() -> str | None:
    """Install the Node baseline's packages if needed; None if ready, else why not."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not found"
    marker = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
        try:
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR,
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (OSError, subprocess.SubprocessError) as error:
            return f"npm ci failed: {error}"
    return None


class Server:
    """One server process under test."""

    def __init__(self, kind: str, postgres_url: str, redis_url: str) -> None:
        self.kind = kind
        self.port = free_port(HOST)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        if kind == "switchboard":
            settings = standalone_settings(
                database_url=postgres_url,
                redis_url=redis_url,
                gateway_host=HOST,
                gateway_port=self.port,
                dashboard_token_secret=SECRET,
                gateway_connect_rate_per_source=5000,
                gateway_connect_rate_global=5000,
                gateway_max_connections_per_merchant=1000,
                gateway_position_check_seconds=3600,
                # At saturation the clients may briefly lag; the baselines drop no one, so
                # neither do we here (the slow-consumer bound has its own test).
                gateway_client_buffer_bytes=256 * 1024 * 1024,
                log_level="WARNING",
            )
            python_args: list[str] = []
            if profile_dir := os.environ.get(PROFILE_ENV):
                # cProfile writes its stats when the gateway exits on SIGTERM.
                out = Path(profile_dir) / f"gateway-{self.port}.prof"
                python_args = ["-m", "cProfile", "-o", str(out)]
            self.process: ChildProcess = SwitchboardProcess(
                "gateway", settings, None, cwd=REPO, python_args=python_args
            )
        elif kind == "socketio":
            argv = [sys.executable, "-m", "benchmarks.socketio_server", str(self.port), redis_url]
            self.process = ChildProcess(kind, argv, env=env, log_path=None, cwd=REPO)
        else:
            argv = ["node", str(NODE_DIR / "server.js"), str(self.port), redis_url]
            self.process = ChildProcess(kind, argv, env=env, log_path=None, cwd=REPO)
        self.process.start()

    async def wait_ready(self) -> None:
        if self.kind == "switchboard":
            try:
                await self.process.wait_ready_async(timeout=20)
            except ServiceError as error:
                raise RuntimeError(f"{self.kind} server did not start: {error}") from None
            return
        path = {"socketio": "/socket.io/?EIO=4&transport=polling", "node": "/healthz"}[self.kind]
        async with httpx.AsyncClient() as http:
            for _ in range(400):
                if (code := self.process.poll()) is not None:
                    raise RuntimeError(f"{self.kind} server exited with {code}")
                try:
                    await http.get(f"http://{HOST}:{self.port}{path}", timeout=1)
                    return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.kind} server did not start")

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process so far."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return math.nan
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.stop(5)


class ClientProcess:
    """One client process: connect, then mark/report measurement windows."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> int:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.fanout_clients",
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        ready = await self.ask(json.dumps(self.spec), timeout=90)
        return int(ready["ready"])

    async def ask(self, line: str, timeout: float = 30) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin and self.process.stdout
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()
        answer = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not answer:
            raise RuntimeError("a client process exited")
        result: dict[str, Any] = json.loads(answer)
        return result

    async def stop(self) -> None:
        if self.process is None:
            return
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class Clients:
    """Every client of one run, spread over ``CLIENT_PROCESSES`` processes."""

    def __init__(self, kind: str, port: int, merchants: list[str], per_merchant: int) -> None:
        now = time.time()
        clients = []
        for merchant in merchants:
            token = ""
            if kind == "switchboard":
                token, _ = issue_dashboard_token(SECRET, merchant, ttl_seconds=3600, now=now)
            clients += [[merchant, token]] * per_merchant
        self.processes = [
            ClientProcess({"protocol": kind, "port": port, "clients": clients[i::CLIENT_PROCESSES]})
            for i in range(CLIENT_PROCESSES)
        ]

    async def start(self) -> int:
        return sum(await asyncio.gather(*(p.start() for p in self.processes)))

    async def mark(self) -> None:
        await asyncio.gather(*(p.ask("mark") for p in self.processes))

    async def report(self) -> tuple[Window, int]:
        """The window since the last mark, and the deliveries since the start."""
        reports = await asyncio.gather(*(p.ask("report") for p in self.processes))
        if any(r["closed"] for r in reports):
            raise RuntimeError(f"{sum(r['closed'] for r in reports)} clients were disconnected")
        window = Window(
            deliveries=sum(r["deliveries"] for r in reports),
            seconds=max(r["seconds"] for r in reports),
            cpu=sum(r["cpu"] for r in reports),
            latencies=[x for r in reports for x in r["latencies"]],
        )
        return window, sum(r["total"] for r in reports)

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.processes))


class RedisPublisher(asyncio.Protocol):
    """PUBLISH commands written straight to a Redis socket; replies are only counted."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.sent = 0
        self.replies = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.replies += data.count(b"\r\n")  # every reply is ":<receivers>\r\n"

    def publish(self, messages: list[tuple[bytes, bytes]]) -> None:
        assert self.transport is not None
        self.transport.write(
            b"".join(
                b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                % (len(channel), channel, len(body), body)
                for channel, body in messages
            )
        )
        self.sent += len(messages)

    async def caught_up(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.replies < self.sent and time.monotonic() < deadline:
            await asyncio.sleep(0.005)


class Publisher:
    """Events for random merchants at a fixed rate, open loop, in ``BATCH_SECONDS`` batches."""

    def __init__(
        self, kind: str, redis: RedisPublisher, pool: asyncpg.Pool, merchants: list[str]
    ) -> None:
        self.kind = kind
        self.redis = redis
        self.pool = pool
        self.merchants = merchants
        self.formats = {m: Formats(kind, m) for m in merchants}
        self.seq = dict.fromkeys(merchants, 0)
        self.random = random.Random(1)
        self.published = 0

    async def prepare(self, count: int, *, each_merchant: bool = False) -> list[tuple[str, int]]:
        """The next events; for Switchboard also written to Postgres (outside the timing)."""
        plan = []
        for index in range(count):
            merchant = (
                self.merchants[index % len(self.merchants)]
                if each_merchant
                else self.random.choice(self.merchants)
            )
            self.seq[merchant] += 1
            plan.append((merchant, self.seq[merchant]))
        if self.kind == "switchboard":
            now = datetime.now(UTC)
            await self.pool.copy_records_to_table(
                "events",
                records=[(m, s, f"evt_{m}_{s}", "payment.succeeded", "{}", now) for m, s in plan],
                columns=["merchant_id", "seq", "event_id", "type", "data", "created_at"],
            )
        return plan

    async def run(self, plan: list[tuple[str, int]], rate: float) -> float:
        """Publish ``plan`` at ``rate``/s; returns the seconds it took."""
        started = time.perf_counter()
        per_batch = max(1, round(rate * BATCH_SECONDS))
        formats = self.formats
        for index in range(0, len(plan), per_batch):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.time()
            self.redis.publish(
                [
                    (formats[m].channel, formats[m].message(seq, now))
                    for m, seq in plan[index : index + per_batch]
                ]
            )
        self.published += len(plan)
        await self.redis.caught_up()
        return time.perf_counter() - started


# -- one run --------------------------------------------------------------------------------


class Session:
    """One server, its clients and the publisher, for one system and shape."""

    def __init__(
        self,
        kind: str,
        shape: str,
        plan: FanoutPlan,
        server: Server,
        clients: Clients,
        publisher: Publisher,
    ) -> None:
        self.kind = kind
        self.shape = shape
        self.plan = plan
        self.server = server
        self.clients = clients
        self.publisher = publisher
        self.fanout = SHAPES[shape][1]
        self.lost = 0

    @property
    def expected(self) -> int:
        return self.publisher.published * self.fanout

    async def drain(self, timeout: float) -> bool:
        """Wait until the clients have every delivery published so far (at most ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            _, total = await self.clients.report()
            if total >= self.expected - self.lost:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)

    async def warm_up(self) -> None:
        """One event per merchant until a round arrives complete (subscriptions are up)."""
        for _ in range(20):
            merchants = len(self.publisher.merchants)
            events = await self.publisher.prepare(merchants, each_merchant=True)
            await self.publisher.run(events, rate=2_000)
            if await self.drain(2.0):
                return
            _, after = await self.clients.report()
            self.lost = self.expected - after  # a round published before the server listened
        raise RuntimeError(f"{self.kind}: warm-up events never all arrived")

    async def step(self, rate: float, seconds: float) -> tuple[Window, float, bool]:
        """Publish at ``rate`` for ``seconds``; (window, server CPU s, delivered in grace)."""
        events = await self.publisher.prepare(max(1, int(rate * seconds)))
        await self.clients.mark()
        cpu = self.server.cpu_seconds()
        elapsed = await self.publisher.run(events, rate)
        window, _ = await self.clients.report()
        server_cpu = self.server.cpu_seconds() - cpu
        window.seconds = elapsed
        kept_up = await self.drain(max(0.5, seconds / 4))
        if not kept_up and not await self.drain(DRAIN_TIMEOUT):
            _, total = await self.clients.report()
            self.lost = self.expected - total
        return window, server_cpu, kept_up

    async def measure(self, start_rate: float, factor: float) -> Run:
        seconds = self.plan.step_seconds
        rate, best, sustained, steps = start_rate, None, 0.0, 0
        while steps < MAX_STEPS:
            steps += 1
            window, server_cpu, kept_up = await self.step(rate, seconds)
            delivered = window.deliveries / window.seconds
            if best is None or delivered > best[0]:
                best = (delivered, server_cpu / window.seconds, window.cpu / window.seconds)
            if not kept_up:
                break
            sustained = rate
            rate *= factor
            if rate > MAX_RATE[self.shape]:
                break
        assert best is not None
        deliveries, server_cores, client_cores = best
        half = max(1.0, deliveries / self.fanout / 2)
        latency, _, _ = await self.step(half, self.plan.latency_seconds)
        return Run(
            events_in=deliveries / self.fanout,
            deliveries=deliveries,
            sustained=sustained,
            half_rate=half,
            p50_ms=percentile(latency.latencies, 50),
            p99_ms=percentile(latency.latencies, 99),
            server_cpu=server_cores,
            client_cpu=client_cores,
            steps=steps,
            lost=self.lost,
        )


async def _one(
    kind: str,
    shape: str,
    plan: FanoutPlan,
    stores: tuple[str, str],
    pool: asyncpg.Pool,
    redis: RedisPublisher,
    previous: Run | None,
) -> Run:
    merchant_count, per_merchant = SHAPES[shape]
    tag = uuid.uuid4().hex[:6]
    merchants = [f"bench_{tag}_{i}" for i in range(merchant_count)]
    server = Server(kind, *stores)
    clients = Clients(kind, server.port, merchants, per_merchant)
    try:
        await server.wait_ready()
        connected = await clients.start()
        if connected != merchant_count * per_merchant:
            raise RuntimeError(f"only {connected} {kind} clients connected")
        session = Session(
            kind, shape, plan, server, clients, Publisher(kind, redis, pool, merchants)
        )
        await session.warm_up()
        if previous is None:
            return await session.measure(START_RATE[shape], 1.5)
        return await session.measure(previous.events_in * 0.6, 1.2)
    finally:
        await clients.stop()
        server.stop()


@contextlib.contextmanager
def fanout_stores() -> Iterator[tuple[str, str]]:
    """Embedded Postgres (migrated) and Redis alone, for ``--only fanout``."""
    root = Path(tempfile.mkdtemp(prefix="switchboard-fanout-"))
    with (
        EmbeddedPostgres(root / "postgres", free_port(HOST)) as postgres,
        EmbeddedRedis(root / "redis", free_port(HOST)) as redis,
    ):
        migrate(postgres.url)
        yield postgres.url, redis.url
    shutil.rmtree(root, ignore_errors=True)


async def measure_fanout(postgres_url: str, redis_url: str, quick: bool) -> Section:
    """Every system, both shapes; medians of ``repeats`` interleaved runs."""
    plan = QUICK_FANOUT if quick else FULL_FANOUT
    node_missing = node_available()
    systems = [s for s in SYSTEMS if s != "node" or node_missing is None]
    pool = await asyncpg.create_pool(postgres_url, min_size=1, max_size=2)
    parts = urlsplit(redis_url)
    _, redis = await asyncio.get_running_loop().create_connection(
        RedisPublisher, parts.hostname or HOST, parts.port or 6379
    )
    results: dict[tuple[str, str], list[Run]] = {}
    try:
        for _ in range(plan.repeats):
            for shape in SHAPES:
                for kind in systems:
                    print(f"  fan-out {kind} {shape} ...", file=sys.stderr, flush=True)
                    runs = results.setdefault((kind, shape), [])
                    runs.append(
                        await _one(
                            kind,
                            shape,
                            plan,
                            (postgres_url, redis_url),
                            pool,
                            redis,
                            runs[-1] if runs else None,
                        )
                    )
    finally:
        assert redis.transport is not None
        redis.transport.close()
        await pool.close()
    return FanoutSection(plan, results, systems, node_missing)


class FanoutSection(Section):
    """The three systems side by side (the generic section has one baseline column)."""

    def __init__(
        self,
        plan: FanoutPlan,
        results: dict[tuple[str, str], list[Run]],
        systems: list[str],
        node_missing: str | None,
    ) -> None:
        super().__init__(
            title="Gateway fan-out — Redis publish to WebSocket client",
            baseline="python-socketio with `AsyncRedisManager`, served by uvicorn; Node "
            "Socket.IO 4.8 with `@socket.io/redis-adapter` 8.3 (node-redis 4.7)",
            rows=[],
        )
        self.plan = plan
        self.results = results
        self.systems = systems
        self.node_missing = node_missing
        for shape in SHAPES:
            ours = results[("switchboard", shape)]
            theirs = results[("socketio", shape)]
            self.rows.append(
                Row(
                    f"{SHAPE_LABELS[shape]}: deliveries/s",
                    "/s",
                    [r.deliveries for r in ours],
                    [r.deliveries for r in theirs],
                    Target(">=", 4, on_ratio=True),
                )
            )

    def render(self) -> str:
        systems = self.systems
        header = [
            "Figure",
            *(LABELS[s] for s in systems),
            *(f"vs {LABELS[s]}" for s in systems[1:]),
            "Target",
            "Runs (" + ", ".join(LABELS[s] for s in systems) + ")",
        ]
        rows = []
        for shape in SHAPES:
            label = SHAPE_LABELS[shape]
            figures: list[tuple[str, str, str, Any, Target | None, dict[str, Target]]] = [
                (
                    "events/s in at saturation",
                    "/s",
                    "events_in",
                    None,
                    Target(">=", 500_000 / 60, "/s") if shape == "500x2" else None,
                    {},
                ),
                (
                    "deliveries/s out at saturation",
                    "/s",
                    "deliveries",
                    None,
                    None,
                    {
                        "socketio": Target(">=", 4, on_ratio=True),
                        "node": Target(">=", 1, on_ratio=True),
                    },
                ),
                ("highest offered rate delivered in full", "/s", "sustained", None, None, {}),
                ("publish→client p50 at half saturation", "ms", "p50_ms", None, None, {}),
                (
                    "publish→client p99 at half saturation",
                    "ms",
                    "p99_ms",
                    None,
                    Target("<=", 50, "ms"),
                    {},
                ),
                ("half-saturation rate (events/s)", "/s", "half_rate", None, None, {}),
                ("server CPU at saturation (cores)", "", "server_cpu", None, None, {}),
                ("client processes' CPU at saturation (cores)", "", "client_cpu", None, None, {}),
            ]
            for name, unit, attr, _, target, ratio_targets in figures:
                values = {
                    s: [float(getattr(r, attr)) for r in self.results[(s, shape)]] for s in systems
                }
                medians = {s: median(values[s]) for s in systems}
                verdicts = []
                if target is not None:
                    met = target.met(medians["switchboard"], math.nan)
                    verdicts.append(f"{target} {'—' if met is None else '✅' if met else '❌'}")
                for other, ratio_target in ratio_targets.items():
                    if other in systems:
                        met = ratio_target.met(
                            math.nan, ratio(medians["switchboard"], medians[other])
                        )
                        mark = "—" if met is None else "✅" if met else "❌"
                        verdicts.append(f"{ratio_target} {LABELS[other]} {mark}")
                rows.append(
                    [
                        f"{label}: {name}",
                        *(_number(medians[s], unit) for s in systems),
                        *(_times(ratio(medians["switchboard"], medians[s])) for s in systems[1:]),
                        "; ".join(verdicts),
                        " / ".join(_series(values[s]) for s in systems),
                    ]
                )
        lost = {
            k: sum(r.lost for r in v) for k, v in self.results.items() if any(r.lost for r in v)
        }
        notes = [
            f"{self.plan.repeats} run(s) per figure (medians; each run is a fresh server process);"
            f" saturation steps of {self.plan.step_seconds:g} s (x1.5 from"
            f" {START_RATE['500x2']:,.0f}/s and {START_RATE['1x100']:,.0f}/s, later runs x1.2"
            " from 0.6x the previous saturation), each drained completely before the next;"
            f" latency over {self.plan.latency_seconds:g} s at half saturation, every"
            " 4th delivery sampled.",
            f"Clients in {CLIENT_PROCESSES} separate processes (a minimal RFC 6455 frame counter,"
            " so the client side costs far less than the servers); publisher in the benchmark"
            " process, writing pre-built PUBLISH commands straight to the Redis socket in 5 ms"
            " batches. Everything on 127.0.0.1.",
            "Saturation: the most deliveries/s the clients received during any step; a step"
            " is delivered in full when every event arrived within max(0.5 s, step/4) of its end.",
        ]
        if lost:
            notes.append(f"Lost deliveries (never arrived): {lost}.")
        if self.node_missing is not None:
            notes.append(f"Node Socket.IO not measured: {self.node_missing}.")
        lines = [f"## {self.title}", "", f"Baselines: {self.baseline}.", ""]
        lines += _table(header, rows)
        lines += [""] + [f"- {note}" for note in notes]
        return "\n".join(lines).rstrip() + "\n"
