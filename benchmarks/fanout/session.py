"""One run: a server, its clients and the publisher for one system and shape; warm-up, the
saturation search, then latency at half saturation."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import asyncpg

from benchmarks.fanout.clients import Clients, Window
from benchmarks.fanout.plan import (
    DRAIN_TIMEOUT,
    MAX_RATE,
    MAX_STEPS,
    SHAPES,
    START_RATE,
    FanoutPlan,
)
from benchmarks.fanout.publisher import Publisher, RedisPublisher
from benchmarks.fanout.servers import Server
from benchmarks.stats import percentile

__all__ = ["Run", "Session", "run_once"]


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


async def run_once(
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
