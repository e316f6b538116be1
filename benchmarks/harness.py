"""The benchmark process's side of a run: its connections, and alternating repeated measurement.

:class:`Harness` holds what every measurement needs (the stack, a Postgres pool, a Temporal
client, the CPU meter, the plan). :meth:`Harness.alternate` runs a baseline and a subject
``repeats`` times, interleaved, measuring each run's CPU; :func:`settle` waits until webhooks
reached a final status in the ``webhooks`` table.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import asyncpg
from temporalio.client import Client

from benchmarks.plan import Plan
from benchmarks.stack import BenchStack, CpuMeter, CpuUse
from core.contracts import WebhookStatus
from core.db import connect_pool

__all__ = ["FINAL_STATUSES", "Harness", "Pairs", "open_harness", "progress", "settle"]

FINAL_STATUSES = [
    str(status)
    for status in (WebhookStatus.PROCESSED, WebhookStatus.IGNORED, WebhookStatus.DEAD_LETTERED)
]
SETTLE_POLL = 0.05

B = TypeVar("B")
S = TypeVar("S")


@dataclass
class Pairs(Generic[B, S]):
    """Baseline and subject results of the repeats, with each run's CPU use."""

    baseline: list[B] = field(default_factory=list)
    subject: list[S] = field(default_factory=list)
    baseline_cpu: list[CpuUse] = field(default_factory=list)
    subject_cpu: list[CpuUse] = field(default_factory=list)


@dataclass
class Harness:
    """Live connections of the benchmark process to one :class:`BenchStack`."""

    stack: BenchStack
    pool: asyncpg.Pool
    temporal: Client
    meter: CpuMeter
    plan: Plan
    phase_cpu: dict[str, CpuUse] = field(default_factory=dict)

    async def alternate(
        self,
        phase: str,
        baseline: Callable[[], Awaitable[B]],
        subject: Callable[[], Awaitable[S]],
    ) -> Pairs[B, S]:
        """Run ``baseline`` then ``subject``, ``plan.repeats`` times, measuring each run's CPU.

        The subject runs' CPU, taken together, is kept as ``phase_cpu[phase]`` for the report.
        """
        pairs: Pairs[B, S] = Pairs()
        with progress(phase):
            for _ in range(self.plan.repeats):
                self.stack.check_alive()
                with self.meter.measure() as measuring:
                    pairs.baseline.append(await baseline())
                pairs.baseline_cpu.append(measuring.use)
                with self.meter.measure() as measuring:
                    pairs.subject.append(await subject())
                pairs.subject_cpu.append(measuring.use)
            self.stack.check_alive()
        self.phase_cpu[phase] = CpuUse.total(pairs.subject_cpu)
        return pairs

    async def inbox_backlog(self) -> int:
        """Webhooks recorded but not yet in a final status."""
        backlog: int = await self.pool.fetchval(
            "SELECT count(*) FROM webhooks WHERE status <> ALL($1::text[])", FINAL_STATUSES
        )
        return backlog


@contextmanager
def progress(what: str) -> Iterator[None]:
    """Tell the terminal what is running and, once done, how long it took."""
    started = time.monotonic()
    print(f"[bench] {what} ...", file=sys.stderr, end="", flush=True)
    try:
        yield
    finally:
        print(f" {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


@asynccontextmanager
async def open_harness(stack: BenchStack, plan: Plan) -> AsyncIterator[Harness]:
    pool = await connect_pool(stack.database_url, size=4)
    try:
        temporal = await Client.connect(stack.temporal.address)
        yield Harness(stack, pool, temporal, CpuMeter(stack.pids()), plan)
    finally:
        await pool.close()


async def settle(
    pool: asyncpg.Pool, partner_id: str, webhook_ids: list[str], timeout: float
) -> list[asyncpg.Record]:
    """Wait (at most ``timeout`` s) for the webhooks to reach a final status; return their rows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        settled = await pool.fetchval(
            "SELECT count(*) FROM webhooks WHERE partner_id = $1"
            " AND webhook_id = ANY($2::text[]) AND status = ANY($3::text[])",
            partner_id,
            webhook_ids,
            FINAL_STATUSES,
        )
        if settled >= len(webhook_ids):
            break
        await asyncio.sleep(SETTLE_POLL)
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT webhook_id, status, received_at, workflow_started_at, processed_at, published_at"
        " FROM webhooks WHERE partner_id = $1 AND webhook_id = ANY($2::text[])",
        partner_id,
        webhook_ids,
    )
    return rows
