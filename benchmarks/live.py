"""Live-feed benchmark: from a signed webhook's POST to the event on a dashboard's WebSocket.

The whole stack: api ingress → inbox → relay → workflow → ledger → Redis publish → gateway (its
own process, :class:`benchmarks.stack.BenchStack` with ``gateway=True``) → WebSocket client.
A few merchants are created for the measurement, each followed by one client that got its token
from the api (``POST /v1/merchants/{id}/dashboard-tokens`` with the admin key) and authenticated
on the gateway like the dashboard does (``{"type": "auth", "token", "since_seq"}``).

Webhooks are new payments to those merchants (:mod:`benchmarks.workload`), sent open loop at a
steady rate. A webhook's latency is the arrival of its event on the client (matched by
``data.payment_id``) minus the moment the benchmark process began sending it, both on this
process's clock. Baseline: the same webhooks' ``webhooks.published_at - webhooks.received_at``
from Postgres, so the ratio is what the gateway hop (and the HTTP send) adds to the pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from benchmarks.harness import Harness, progress, settle
from benchmarks.http_load import RawClient, open_loop
from benchmarks.report import Row, Section, Target
from benchmarks.stack import HOST, CpuUse
from benchmarks.stats import Latency
from benchmarks.workload import SignedWebhook, payment_webhooks
from core.settings import DEV_ADMIN_API_KEY

__all__ = ["measure_live"]

MERCHANTS = 5
CONNECTIONS = 4
WARM_UP_WEBHOOKS = 5
LATENCY_TARGET_MS = 100.0
ARRIVAL_POLL = 0.05
CONNECT_TIMEOUT = 10.0


@dataclass
class Feed:
    """One dashboard-like client: when each payment's event arrived (``time.time()``)."""

    merchant_id: str
    connection: ClientConnection
    arrivals: dict[str, float] = field(default_factory=dict)
    live: asyncio.Event = field(default_factory=asyncio.Event)
    closed: int | None = None
    last_seq: int = 0

    async def read(self) -> None:
        try:
            async for raw in self.connection:
                received = time.time()
                message = json.loads(raw)
                if "seq" in message:
                    self.last_seq = message["seq"]
                    self.arrivals[message["data"].get("payment_id", "")] = received
                elif message.get("control") == "live":
                    self.live.set()
        except ConnectionClosed:
            pass
        self.closed = self.connection.close_code or 1006
        self.live.set()


@dataclass(frozen=True)
class LiveRun:
    """One steady run: the client's latencies and the same webhooks' Postgres latencies."""

    to_client: Latency
    published: Latency
    after_published: Latency
    """Arrival minus the same webhook's ``published_at`` (set just after the Redis publish
    returned, so it can be negative: the gateway hop runs alongside that UPDATE)."""
    accepted: int
    not_accepted: int
    missing: int
    """Accepted webhooks whose event no client had received when the timeout was up."""


async def measure_live(h: Harness) -> Section:
    """Webhook→WebSocket client latency at the plan's steady rate; one report section."""
    plan = h.plan
    merchants = [f"live_{uuid.uuid4().hex[:8]}_{i}" for i in range(MERCHANTS)]
    runs: list[LiveRun] = []
    uses: list[CpuUse] = []
    phase = f"live feed {plan.live_rate:g}/s through the gateway"
    async with _feeds(h, merchants) as feeds:
        with progress(phase):
            await _run(h, feeds, merchants, WARM_UP_WEBHOOKS, rate=20)
            for _ in range(plan.live_repeats):
                h.stack.check_alive()
                with h.meter.measure() as measuring:
                    count = int(plan.live_rate * plan.live_seconds)
                    runs.append(await _run(h, feeds, merchants, count, rate=plan.live_rate))
                uses.append(measuring.use)
            h.stack.check_alive()
    h.phase_cpu[phase] = CpuUse.total(uses)
    return _section(h, runs)


@contextlib.asynccontextmanager
async def _feeds(h: Harness, merchants: list[str]) -> AsyncIterator[list[Feed]]:
    """Create the merchants, get their tokens from the api, connect and authenticate."""
    async with h.pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO merchants (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
            [(name,) for name in merchants],
        )
        found = await conn.fetch(
            "SELECT id, last_seq FROM merchants WHERE id = ANY($1::text[])", merchants
        )
    seqs: dict[str, int] = {row["id"]: row["last_seq"] for row in found}
    headers = {"authorization": f"Bearer {DEV_ADMIN_API_KEY}"}
    async with httpx.AsyncClient(base_url=h.stack.api_url, headers=headers) as api:
        tokens = {}
        for name in merchants:
            answer = await api.post(f"/v1/merchants/{name}/dashboard-tokens")
            answer.raise_for_status()
            tokens[name] = answer.json()["token"]
    feeds: list[Feed] = []
    readers: list[asyncio.Task[None]] = []
    try:
        for name in merchants:
            connection = await connect(
                h.stack.gateway_url, compression=None, open_timeout=CONNECT_TIMEOUT
            )
            feed = Feed(name, connection, last_seq=seqs[name])
            feeds.append(feed)
            auth = {"type": "auth", "token": tokens[name], "since_seq": seqs[name]}
            await connection.send(json.dumps(auth))
            readers.append(asyncio.create_task(feed.read()))
        async with asyncio.timeout(CONNECT_TIMEOUT):
            for feed in feeds:
                await feed.live.wait()
        closed = {feed.merchant_id: feed.closed for feed in feeds if feed.closed is not None}
        if closed:
            raise RuntimeError(f"gateway closed the feeds before they went live: {closed}")
        yield feeds
    finally:
        for feed in feeds:
            await feed.connection.close()
        for reader in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _run(
    h: Harness, feeds: list[Feed], merchants: list[str], count: int, *, rate: float
) -> LiveRun:
    stack = h.stack
    requests = payment_webhooks(
        stack.partner_id,
        stack.partner_secret,
        count,
        host=f"{HOST}:{stack.api_port}",
        merchant_ids=merchants,
    )
    payment_of = {r.webhook_id: json.loads(r.body)["data"]["payment_id"] for r in requests}
    sent_at: dict[str, float] = {}
    client = await RawClient(HOST, stack.api_port, CONNECTIONS).open()

    async def send(request: SignedWebhook) -> int:
        sent_at[payment_of[request.webhook_id]] = time.time()
        return await client.send(request)

    try:
        load = await open_loop(_Sender(send), requests, rate, grace=h.plan.settle_timeout)
    finally:
        await client.aclose()
    accepted = set(sent_at)  # every request was started; only accepted ones can arrive
    arrivals = await _arrivals(feeds, accepted, load.accepted, h.plan.settle_timeout)
    webhook_ids = [r.webhook_id for r in requests]
    rows = await settle(h.pool, stack.partner_id, webhook_ids, h.plan.settle_timeout)
    published = [row for row in rows if row["published_at"] is not None]
    to_client = [arrivals[p] - sent_at[p] for p in accepted if p in arrivals]
    after_published = [
        arrivals[payment] - row["published_at"].timestamp()
        for row in published
        if (payment := payment_of[row["webhook_id"]]) in arrivals
    ]
    return LiveRun(
        to_client=Latency.of(to_client),
        published=Latency.of(
            [(row["published_at"] - row["received_at"]).total_seconds() for row in published]
        ),
        after_published=Latency.of(after_published),
        accepted=load.accepted,
        not_accepted=load.failed,
        missing=load.accepted - len(to_client),
    )


class _Sender:
    """Adapts a send function to :class:`benchmarks.http_load.Client` for :func:`open_loop`."""

    def __init__(self, send: Callable[[SignedWebhook], Awaitable[int]]) -> None:
        self._send = send

    async def open(self) -> _Sender:
        return self

    async def send(self, request: SignedWebhook) -> int:
        return await self._send(request)

    async def aclose(self) -> None:
        return None


async def _arrivals(
    feeds: list[Feed], payments: set[str], expected: int, timeout: float
) -> dict[str, float]:
    """Wait (at most ``timeout`` s) until ``expected`` of ``payments`` arrived on some feed."""
    deadline = time.monotonic() + timeout
    while True:
        found = {
            payment: at
            for feed in feeds
            for payment, at in feed.arrivals.items()
            if payment in payments
        }
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        if any(feed.closed is not None for feed in feeds):
            closed = {feed.merchant_id: feed.closed for feed in feeds if feed.closed is not None}
            raise RuntimeError(f"the gateway closed feeds during the run: {closed}")
        await asyncio.sleep(ARRIVAL_POLL)


def _section(h: Harness, runs: list[LiveRun]) -> Section:
    plan = h.plan
    rate = f"{plan.live_rate:g}/s"
    rows = [
        Row(
            f"Webhook POST→WebSocket client p50 at {rate}",
            "ms",
            [run.to_client.p50_ms for run in runs],
            [run.published.p50_ms for run in runs],
        ),
        Row(
            f"Webhook POST→WebSocket client p99 at {rate}",
            "ms",
            [run.to_client.p99_ms for run in runs],
            [run.published.p99_ms for run in runs],
            Target("<=", LATENCY_TARGET_MS, "ms"),
        ),
        Row(
            "…max",
            "ms",
            [run.to_client.max_ms for run in runs],
            [run.published.max_ms for run in runs],
        ),
        Row(
            "…per webhook, arrival - its `published_at` p50 (no baseline)",
            "ms",
            [run.after_published.p50_ms for run in runs],
            [math.nan for _ in runs],
        ),
        Row(
            "…per webhook, arrival - its `published_at` p99 (no baseline)",
            "ms",
            [run.after_published.p99_ms for run in runs],
            [math.nan for _ in runs],
        ),
    ]
    notes = [
        f"{plan.live_repeats} run(s) of {plan.live_rate:g} webhooks/s for {plan.live_seconds:g} s,"
        f" open loop over {CONNECTIONS} keep-alive connections, payments round-robin to "
        f"{MERCHANTS} merchants with one WebSocket client each (`websockets`, in the benchmark "
        "process); the gateway runs as its own process. Latency from the start of each POST to "
        "the event's arrival, both on the benchmark process's clock. `published_at` is written "
        "just after the Redis publish returns, so the gateway hop mostly overlaps that UPDATE "
        "and the baseline already contains most of it; the per-webhook rows show the rest.",
    ]
    missing = sum(run.missing for run in runs)
    not_accepted = sum(run.not_accepted for run in runs)
    if missing or not_accepted:
        notes.append(
            f"⚠ {not_accepted} webhooks not accepted and {missing} accepted whose event did not "
            f"reach a client within {plan.settle_timeout:g} s, over all runs; figures count "
            "arrived ones only."
        )
    return Section(
        title="Live feed — webhook receipt to the WebSocket client",
        baseline=(
            "receipt→published of the same webhooks, from Postgres (`webhooks.received_at` → "
            "`webhooks.published_at`): the pipeline without the gateway hop."
        ),
        rows=rows,
        notes=notes,
    )
