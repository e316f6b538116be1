"""The publisher: events for random merchants, open loop, written as pre-built PUBLISH commands
straight to the Redis socket (and, for Switchboard, to Postgres outside the timing)."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime

import asyncpg

from benchmarks.fanout.wire import Formats

__all__ = ["BATCH_SECONDS", "Publisher", "RedisPublisher"]

BATCH_SECONDS = 0.005


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
