"""Delivery benchmark: merchant webhooks from the ledger to a stub merchant, and a dead endpoint.

Webhooks are new payments (:mod:`benchmarks.workload`) to merchants created for each run, each
with one endpoint on the stub merchant (:mod:`benchmarks.stub_merchant`, its own process), so
every merchant event means one delivery. Figures come from Postgres: a delivery's first-attempt
latency is ``delivery_attempts.started_at`` (attempt 1, cycle 0) minus the event's
``events.created_at`` (written in the ledger transaction, milliseconds before its commit); its
success latency ends at ``deliveries.finished_at``.

1. Throughput of a burst of N webhooks, from the first send until every delivery ``succeeded``,
   to an endpoint answering 200 and to one failing 20 % of attempts (500/503, retried 1 s
   apart). Baseline: the same burst to merchants without an endpoint, until every webhook is
   processed: the pipeline alone, so the ratio is what adding one delivery per event costs.
2. First-attempt latency at a steady rate, same two endpoints. Baseline: the no-op workflow's
   start→result latency on the same Temporal server (:mod:`benchmarks.temporal_baseline`), the
   least a relay hop into a workflow and one step can take.
3. A dead endpoint next to healthy ones: half of a burst goes to one merchant whose endpoint
   holds every request without answering (attempts wait out the 30 s timeout) or refuses
   connections, the other half to merchants with healthy endpoints. Figures are the healthy
   deliveries'. Baseline: the same burst with that merchant's endpoint answering 200, so only
   "dead instead of alive" differs.

The worker runs with the default circuit breaker for (3), which is what shields the other
endpoints, and with the breaker threshold raised out of reach for (1) and (2): at 20 %
failures, five failures in a row (the default threshold) happen about once per 3,900 attempts
and would open the circuit for 30 s, which would measure the breaker, not delivery. Between
dead-endpoint runs its endpoint is deleted, its lanes are terminated and the stub drops the held
connections, so no run inherits the previous one's dead work.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import asyncpg
import httpx
from temporalio.service import RPCError

from benchmarks.harness import Harness, progress, settle
from benchmarks.http_load import LoadResult, RawClient, closed_loop, open_loop
from benchmarks.report import Row, Section
from benchmarks.stack import DELIVERY_SETTINGS, HOST, CpuMeter, CpuUse
from benchmarks.stats import Latency, median
from benchmarks.stub_merchant import CONTROL_DROP, CONTROL_STATS
from benchmarks.temporal_baseline import NoopWorkflows
from benchmarks.workload import SignedWebhook, payment_webhooks
from core.contracts import delivery_lane_workflow_id
from core.settings import Settings
from core.signing import generate_secret

__all__ = ["measure_deliveries"]

MERCHANTS_PER_RUN = 20
BURST_CONNECTIONS = 64
STEADY_CONNECTIONS = 4
WARM_UP_WEBHOOKS = 10
SETTLE_POLL = 0.05
UNREACHABLE_THRESHOLD = 1_000_000
STUB_CONNECTIONS = 20
STUB_REQUESTS = 50_000
STUB_SECONDS = 1.0
CLEANUP_CONCURRENCY = 32
DEFAULT_THRESHOLD: int = Settings.model_fields["circuit_failure_threshold"].default
DEFAULT_TIMEOUT: float = Settings.model_fields["delivery_timeout_seconds"].default
RETRY_SCHEDULE = DELIVERY_SETTINGS["DELIVERY_RETRY_SCHEDULE"]

_OUTCOMES = """
SELECT d.id, d.merchant_id, d.status, d.finished_at, e.created_at AS event_at,
       a.scheduled_at AS first_scheduled_at, a.started_at AS first_started_at,
       (SELECT count(*) FROM delivery_attempts x WHERE x.delivery_id = d.id) AS attempts
FROM deliveries d
JOIN events e ON e.event_id = d.event_id
LEFT JOIN delivery_attempts a ON a.delivery_id = d.id AND a.cycle = 0 AND a.attempt = 1
WHERE d.merchant_id = ANY($1::text[])
"""


@dataclass(frozen=True)
class Merchants:
    """One run's merchants: which endpoint each has (None: none), and whose deliveries count."""

    urls: dict[str, str | None]
    measured: list[str]
    order: list[str]
    """Merchant of each webhook, round-robin."""

    @classmethod
    def healthy(cls, url: str | None) -> Merchants:
        names = _names("m", MERCHANTS_PER_RUN)
        return cls(dict.fromkeys(names, url), names, names)

    @classmethod
    def beside(cls, healthy_url: str, other_url: str) -> Merchants:
        """Healthy merchants, and one other merchant that gets every second webhook."""
        names = _names("h", MERCHANTS_PER_RUN)
        other = _names("x", 1)[0]
        order = [name for healthy in names for name in (healthy, other)]
        return cls({**dict.fromkeys(names, healthy_url), other: other_url}, names, order)

    @property
    def others(self) -> list[str]:
        return [name for name in self.urls if name not in self.measured]


@dataclass(frozen=True)
class Run:
    """One run, as recorded in Postgres (the measured merchants' deliveries or webhooks)."""

    throughput: float
    """Deliveries per second (webhooks per second with no endpoint), first send to last done."""
    first_attempt: Latency
    succeeded: Latency
    to_lane: Latency
    """Event until the lane workflow scheduled the first attempt (relay hop and workflow task)."""
    expected: int
    unfinished: int
    not_accepted: int
    attempts: int
    other_attempts: int = 0
    """Attempts at the other (dead or live) merchant's endpoint during the run."""


@dataclass
class Rotation:
    """Each kind of run's repeats and their CPU use."""

    runs: dict[str, list[Run]] = field(default_factory=dict)
    cpu: dict[str, list[CpuUse]] = field(default_factory=dict)

    def values(self, kind: str, figure: Callable[[Run], float]) -> list[float]:
        return [figure(run) for run in self.runs[kind]]

    def cpu_per(self, kind: str, process: str) -> list[float]:
        return [
            use.ms_per(process, run.expected - run.unfinished)
            for run, use in zip(self.runs[kind], self.cpu[kind], strict=True)
        ]


async def measure_deliveries(h: Harness) -> list[Section]:
    """The delivery benchmark (see the module docstring); two report sections."""
    stub = _Stub(h)
    await _warm_up(h)
    dead = await _rotate(
        h,
        f"deliveries beside a dead endpoint, burst of {h.plan.delivery_burst}",
        {
            "live": lambda: _beside(h, stub, h.stack.merchant_url("ok")),
            "hang": lambda: _beside(h, stub, h.stack.merchant_url("hang")),
            "refuse": lambda: _beside(h, stub, f"http://{HOST}:{h.stack.refusing_port}"),
        },
    )
    with progress("restarting the worker with the circuit breaker out of reach"):
        h.stack.restart_worker({"CIRCUIT_FAILURE_THRESHOLD": str(UNREACHABLE_THRESHOLD)})
        h.meter = CpuMeter(h.stack.pids())
        await _warm_up(h)
    capacity = [await stub.capacity() for _ in range(h.plan.repeats)]
    burst = await _rotate(
        h,
        f"deliveries burst of {h.plan.delivery_burst}",
        {
            "none": lambda: _burst(h, Merchants.healthy(None)),
            "ok": lambda: _burst(h, Merchants.healthy(h.stack.merchant_url("ok"))),
            "flaky": lambda: _burst(h, Merchants.healthy(h.stack.merchant_url("flaky"))),
        },
    )
    noop = NoopWorkflows(h.temporal)
    async with noop.worker():
        await noop.round_trips(rate=20, seconds=0.5, grace=h.plan.settle_timeout)
        steady = await _rotate(
            h,
            f"deliveries at {h.plan.delivery_rate:g}/s",
            {
                "noop": lambda: _round_trips(h, noop),
                "ok": lambda: _steady(h, h.stack.merchant_url("ok")),
                "flaky": lambda: _steady(h, h.stack.merchant_url("flaky")),
            },
        )
    stats = await stub.stats()
    return [_throughput_section(h, burst, steady, capacity, stats), _dead_section(h, dead)]


async def _rotate(
    h: Harness, phase: str, kinds: dict[str, Callable[[], Awaitable[Run]]]
) -> Rotation:
    """Run every kind once per repeat, in turn, measuring each run's CPU.

    The first kind is the baseline; the others' CPU, taken together, is ``phase_cpu[phase]``.
    """
    rotation = Rotation({kind: [] for kind in kinds}, {kind: [] for kind in kinds})
    with progress(phase):
        for _ in range(h.plan.repeats):
            for kind, run in kinds.items():
                h.stack.check_alive()
                with h.meter.measure() as measuring:
                    rotation.runs[kind].append(await run())
                rotation.cpu[kind].append(measuring.use)
        h.stack.check_alive()
    subjects = [use for kind in list(kinds)[1:] for use in rotation.cpu[kind]]
    h.phase_cpu[phase] = CpuUse.total(subjects)
    return rotation


async def _warm_up(h: Harness) -> None:
    """A few deliveries through, so no run pays the (re)started worker's first-use costs."""
    merchants = Merchants.healthy(h.stack.merchant_url("ok"))
    await _create(h, merchants)
    requests = _webhooks(h, merchants, WARM_UP_WEBHOOKS)
    await _send(h, requests, rate=20)
    rows = await _settle(h, merchants, len(requests))
    if sum(row["status"] == "succeeded" for row in rows) < len(requests):
        raise RuntimeError(
            f"warm-up deliveries did not succeed within {h.plan.settle_timeout:g} s: "
            f"{[row['status'] for row in rows]}\n{h.stack.log_tail('worker')}"
        )


async def _burst(h: Harness, merchants: Merchants) -> Run:
    """A burst to ``merchants``; see the module docstring, (1)."""
    await _create(h, merchants)
    requests = _webhooks(h, merchants, h.plan.delivery_burst)
    load = await _send(h, requests, rate=None)
    if merchants.urls[merchants.measured[0]] is None:
        return await _pipeline_only(h, requests, load)
    return _summary(await _settle(h, merchants, load.accepted), load)


async def _steady(h: Harness, url: str) -> Run:
    """Webhooks at the steady rate to merchants with an endpoint at ``url``; (2)."""
    merchants = Merchants.healthy(url)
    await _create(h, merchants)
    plan = h.plan
    requests = _webhooks(h, merchants, int(plan.delivery_rate * plan.delivery_seconds))
    load = await _send(h, requests, rate=plan.delivery_rate)
    return _summary(await _settle(h, merchants, load.accepted), load)


async def _round_trips(h: Harness, noop: NoopWorkflows) -> Run:
    plan = h.plan
    trips = await noop.round_trips(
        plan.delivery_rate, plan.delivery_baseline_seconds, grace=plan.settle_timeout
    )
    count = len(trips.workflow_ids)
    return Run(math.nan, trips.latency, trips.latency, trips.latency, count, 0, 0, count)


async def _beside(h: Harness, stub: _Stub, other_url: str) -> Run:
    """Half a burst to healthy endpoints, half to one endpoint at ``other_url``; (3)."""
    merchants = Merchants.beside(h.stack.merchant_url("ok"), other_url)
    endpoints = await _create(h, merchants)
    requests = _webhooks(h, merchants, h.plan.delivery_burst)
    load = await _send(h, requests, rate=None)
    healthy = sum(1 for request in requests if request.merchant_id in merchants.measured)
    rows = await _settle(h, merchants, healthy)
    run = _summary(rows, load, expected=healthy)
    other_attempts = await h.pool.fetchval(
        "SELECT count(*) FROM delivery_attempts WHERE endpoint_id = ANY($1::text[])",
        [endpoints[name] for name in merchants.others],
    )
    await _retire(h, stub, [endpoints[name] for name in merchants.others])
    return replace(run, other_attempts=other_attempts)


async def _pipeline_only(h: Harness, requests: list[WebhookFor], load: LoadResult) -> Run:
    """The no-endpoint baseline: webhooks until processed, as in the pipeline benchmark."""
    ids = [request.webhook.webhook_id for request in requests]
    rows = await settle(h.pool, h.stack.partner_id, ids, h.plan.settle_timeout)
    done = [row for row in rows if row["processed_at"] is not None]
    last = max((row["processed_at"] for row in done), default=None)
    elapsed = last.timestamp() - load.first_send_wall if last is not None else math.nan
    published = _seconds(done, "received_at", "published_at")
    return Run(
        throughput=len(done) / elapsed,
        first_attempt=Latency.of(published),
        succeeded=Latency.of(published),
        to_lane=Latency.of(published),
        expected=load.accepted,
        unfinished=load.accepted - len(done),
        not_accepted=load.failed,
        attempts=0,
    )


def _summary(rows: list[asyncpg.Record], load: LoadResult, *, expected: int | None = None) -> Run:
    expected = load.accepted if expected is None else expected
    done = [row for row in rows if row["status"] == "succeeded"]
    last = max((row["finished_at"] for row in done), default=None)
    elapsed = last.timestamp() - load.first_send_wall if last is not None else math.nan
    return Run(
        throughput=len(done) / elapsed,
        first_attempt=Latency.of(_seconds(rows, "event_at", "first_started_at")),
        succeeded=Latency.of(_seconds(done, "event_at", "finished_at")),
        to_lane=Latency.of(_seconds(rows, "event_at", "first_scheduled_at")),
        expected=expected,
        unfinished=expected - len(done),
        not_accepted=load.failed,
        attempts=sum(row["attempts"] for row in rows),
    )


# -- setting up and tearing down ------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookFor:
    """A signed webhook and the merchant it pays."""

    webhook: SignedWebhook
    merchant_id: str


def _names(role: str, count: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"bench_dlv_{run}_{role}{i}" for i in range(count)]


async def _create(h: Harness, merchants: Merchants) -> dict[str, str]:
    """Register the merchants and their endpoints as ``POST /v1/endpoints`` does; their ids."""
    endpoints = {name: f"ep_{uuid.uuid4().hex[:20]}" for name, url in merchants.urls.items() if url}
    async with h.pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            "INSERT INTO merchants (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
            [(name,) for name in merchants.urls],
        )
        await conn.executemany(
            "INSERT INTO endpoints (id, merchant_id, url, description) VALUES ($1, $2, $3, $4)",
            [
                (endpoint, name, merchants.urls[name], "benchmark")
                for name, endpoint in endpoints.items()
            ],
        )
        await conn.executemany(
            "INSERT INTO endpoint_secrets (endpoint_id, secret) VALUES ($1, $2)",
            [(endpoint, generate_secret()) for endpoint in endpoints.values()],
        )
    return endpoints


async def _retire(h: Harness, stub: _Stub, endpoint_ids: list[str]) -> None:
    """Delete endpoints, end their running lanes and drop their held connections."""
    await h.pool.execute(
        "UPDATE endpoints SET status = 'deleted' WHERE id = ANY($1::text[])", endpoint_ids
    )
    lanes = await h.pool.fetch(
        "SELECT DISTINCT lane FROM deliveries WHERE endpoint_id = ANY($1::text[])"
        " AND status = 'pending'",
        endpoint_ids,
    )
    limit = asyncio.Semaphore(CLEANUP_CONCURRENCY)

    async def terminate(lane: str) -> None:
        async with limit:
            handle = h.temporal.get_workflow_handle(delivery_lane_workflow_id(lane))
            # Finished already, or never started: nothing to end.
            with contextlib.suppress(RPCError):
                await handle.terminate(reason="benchmark run over")

    await asyncio.gather(*(terminate(row["lane"]) for row in lanes))
    await stub.drop()


def _webhooks(h: Harness, merchants: Merchants, count: int) -> list[WebhookFor]:
    stack = h.stack
    signed = payment_webhooks(
        stack.partner_id,
        stack.partner_secret,
        count,
        host=f"{HOST}:{stack.api_port}",
        merchant_ids=merchants.order,
    )
    order = merchants.order
    return [WebhookFor(webhook, order[i % len(order)]) for i, webhook in enumerate(signed)]


async def _send(h: Harness, requests: list[WebhookFor], *, rate: float | None) -> LoadResult:
    """Send at ``rate``/s (open loop) or, with ``rate=None``, all at once (closed loop)."""
    plan = h.plan
    webhooks = [request.webhook for request in requests]
    connections = STEADY_CONNECTIONS if rate is not None else BURST_CONNECTIONS
    client = await RawClient(HOST, h.stack.api_port, connections).open()
    try:
        if rate is not None:
            return await open_loop(client, webhooks, rate, grace=plan.settle_timeout)
        return await closed_loop(
            client, webhooks, connections, plan.settle_timeout, grace=plan.settle_timeout
        )
    finally:
        await client.aclose()


async def _settle(h: Harness, merchants: Merchants, expected: int) -> list[asyncpg.Record]:
    """Wait (at most the settle timeout) until ``expected`` measured deliveries succeeded."""
    deadline = time.monotonic() + h.plan.settle_timeout
    while time.monotonic() < deadline:
        done = await h.pool.fetchval(
            "SELECT count(*) FROM deliveries WHERE merchant_id = ANY($1::text[])"
            " AND status = 'succeeded'",
            merchants.measured,
        )
        if done >= expected:
            break
        await asyncio.sleep(SETTLE_POLL)
    rows: list[asyncpg.Record] = await h.pool.fetch(_OUTCOMES, merchants.measured)
    return rows


def _seconds(rows: Sequence[asyncpg.Record], start: str, end: str) -> list[float]:
    return [
        (row[end] - row[start]).total_seconds()
        for row in rows
        if row[start] is not None and row[end] is not None
    ]


class _Stub:
    """The stub merchant's control paths, and its capacity from a plain keep-alive client."""

    def __init__(self, h: Harness) -> None:
        self._h = h

    async def drop(self) -> None:
        async with httpx.AsyncClient(base_url=self._h.stack.merchant_url("ok")) as client:
            (await client.post(CONTROL_DROP)).raise_for_status()

    async def stats(self) -> dict[str, int]:
        async with httpx.AsyncClient(base_url=self._h.stack.merchant_url("ok")) as client:
            answer = await client.get(CONTROL_STATS)
        answer.raise_for_status()
        stats: dict[str, int] = answer.json()
        return stats

    async def capacity(self) -> float:
        """Requests/s the ``ok`` port answers over keep-alive connections, closed loop."""
        port = self._h.stack.merchant_ports["ok"]
        body = b'{"type":"payment.succeeded"}'
        head = f"POST /capacity HTTP/1.1\r\nhost: {HOST}:{port}\r\ncontent-length: {len(body)}"
        request = SignedWebhook(
            "capacity", "/capacity", {}, body, f"{head}\r\n\r\n".encode() + body
        )
        client = await RawClient(HOST, port, STUB_CONNECTIONS).open()
        try:
            load = await closed_loop(
                client, [request] * STUB_REQUESTS, STUB_CONNECTIONS, STUB_SECONDS, grace=1.0
            )
        finally:
            await client.aclose()
        return load.throughput


# -- the report -----------------------------------------------------------------------------------


def _throughput_section(
    h: Harness,
    burst: Rotation,
    steady: Rotation,
    capacity: list[float],
    stats: dict[str, int],
) -> Section:
    plan = h.plan
    rate = f"{plan.delivery_rate:g}/s"
    n = plan.delivery_burst

    def p50(run: Run) -> float:
        return run.first_attempt.p50_ms

    def p99(run: Run) -> float:
        return run.first_attempt.p99_ms

    rows = [
        Row(
            f"Deliveries/s, burst of {n}, endpoint answering 200 (baseline: webhooks/s, no "
            "endpoint)",
            "/s",
            burst.values("ok", lambda r: r.throughput),
            burst.values("none", lambda r: r.throughput),
        ),
        Row(
            f"Deliveries/s, burst of {n}, 20 % of attempts failing (same baseline)",
            "/s",
            burst.values("flaky", lambda r: r.throughput),
            burst.values("none", lambda r: r.throughput),
        ),
        Row(
            f"Event→first attempt p50 at {rate}, 200s (baseline: no-op workflow)",
            "ms",
            steady.values("ok", p50),
            steady.values("noop", p50),
        ),
        Row(
            f"Event→first attempt p99 at {rate}, 200s",
            "ms",
            steady.values("ok", p99),
            steady.values("noop", p99),
        ),
        Row(
            f"Event→first attempt p50 at {rate}, 20 % failing",
            "ms",
            steady.values("flaky", p50),
            steady.values("noop", p50),
        ),
        Row(
            f"Event→first attempt p99 at {rate}, 20 % failing",
            "ms",
            steady.values("flaky", p99),
            steady.values("noop", p99),
        ),
        Row(
            f"Event→success p99 at {rate}, 20 % failing (retries 1 s apart)",
            "ms",
            steady.values("flaky", lambda r: r.succeeded.p99_ms),
            steady.values("noop", p99),
        ),
        Row(
            "Worker CPU per webhook, burst, with one delivery each (baseline: no endpoint)",
            "ms",
            burst.cpu_per("ok", "worker"),
            burst.cpu_per("none", "worker"),
        ),
        Row(
            "Temporal-server CPU per webhook, burst, with one delivery each (baseline: none)",
            "ms",
            burst.cpu_per("ok", "temporal"),
            burst.cpu_per("none", "temporal"),
        ),
    ]
    flaky_runs = burst.runs["flaky"] + steady.runs["flaky"]
    attempts = sum(run.attempts for run in flaky_runs)
    delivered = sum(run.expected - run.unfinished for run in flaky_runs)
    notes = [
        f"{MERCHANTS_PER_RUN} new merchants per run, one endpoint each on the stub merchant "
        f"(a raw asyncio server in its own process; the 20 % port answers 500 or 503, seeded). "
        f"Burst: {n} webhooks over {BURST_CONNECTIONS} connections, throughput = succeeded "
        "deliveries / (last `finished_at` - first send). Steady: "
        f"{plan.delivery_rate:g}/s for {plan.delivery_seconds:g} s per run, open loop.",
        f"Worker settings: `SWITCHBOARD_DELIVERY_RETRY_SCHEDULE={RETRY_SCHEDULE}` (default: "
        "0 s, 5 s, 5 min, …), allow-list 127.0.0.1/32, and for this section "
        f"`SWITCHBOARD_CIRCUIT_FAILURE_THRESHOLD={UNREACHABLE_THRESHOLD}` (default "
        f"{DEFAULT_THRESHOLD}): at 20 % failures five in a row happen about once per 3,900 "
        "attempts and would open the circuit for 30 s, measuring the breaker, not delivery.",
        f"With 20 % failing: {attempts} attempts for {delivered} deliveries over all runs "
        f"({attempts / delivered if delivered else math.nan:.2f} per delivery). Stub answers "
        f"over the whole run: {_stats_text(stats)}.",
        f"Stub capacity from a plain keep-alive client ({STUB_CONNECTIONS} connections, closed "
        f"loop, {STUB_SECONDS:g} s): {median(capacity):,.0f} requests/s (median), far above "
        "the delivery rate, so the stub does not cap it.",
        "CPU per webhook: the process's CPU over each run divided by its webhooks; the "
        "difference between the two columns is what one delivery costs. The stub merchant "
        f"used {median(burst.cpu_per('ok', 'merchant')):.2f} ms per delivery. Event→first "
        f"attempt p99 within the burst of {n} (queueing): "
        f"{median(burst.values('ok', p99)):,.0f} ms at 200s, "
        f"{median(burst.values('flaky', p99)):,.0f} ms at 20 % failing.",
        f"Where the first-attempt latency at {rate} (200s) goes, medians of p50: event→lane "
        "workflow scheduling the attempt (relay claim, eager start or signal, workflow task) "
        f"{median(steady.values('ok', lambda r: r.to_lane.p50_ms)):,.0f} ms; the rest "
        "(local activity start, loading the delivery, lane-order check, signing) is the "
        "remainder of the p50 above.",
    ]
    notes += _unfinished_note([*burst.runs["ok"], *burst.runs["flaky"], *steady.runs["ok"]])
    return Section(
        title="Deliveries — merchant webhooks to a local stub merchant",
        baseline=(
            f"the same burst of {n} payments to merchants without an endpoint (pipeline only) "
            f"for throughput; the no-op workflow's start→result at {rate} on the same Temporal "
            "server for latency."
        ),
        rows=rows,
        notes=notes,
    )


def _dead_section(h: Harness, dead: Rotation) -> Section:
    n = h.plan.delivery_burst
    rows: list[Row] = []
    verdicts = []
    for kind, label in (("hang", "holding requests"), ("refuse", "refusing connections")):
        kind_rows = [
            Row(
                f"Healthy deliveries/s, dead endpoint {label}",
                "/s",
                dead.values(kind, lambda r: r.throughput),
                dead.values("live", lambda r: r.throughput),
            ),
            Row(
                f"Healthy event→first attempt p50, dead endpoint {label}",
                "ms",
                dead.values(kind, lambda r: r.first_attempt.p50_ms),
                dead.values("live", lambda r: r.first_attempt.p50_ms),
            ),
            Row(
                f"Healthy event→first attempt p99, dead endpoint {label}",
                "ms",
                dead.values(kind, lambda r: r.first_attempt.p99_ms),
                dead.values("live", lambda r: r.first_attempt.p99_ms),
            ),
        ]
        rows += kind_rows
        worse = [row.figure.split(",")[0] for row in kind_rows if _worse(row)]
        verdicts.append(
            f"{label}: " + ("none measurable" if not worse else "slower for " + ", ".join(worse))
        )
    other = {kind: [run.other_attempts for run in runs] for kind, runs in dead.runs.items()}
    notes = [
        f"Burst of {n}: every second webhook pays the other merchant, the rest go to "
        f"{MERCHANTS_PER_RUN} healthy merchants (one endpoint each, answering 200); figures "
        "are the healthy deliveries', from the first send until the last succeeded.",
        "Worker with the default delivery settings but the retry schedule "
        f"({RETRY_SCHEDULE}): circuit breaker opening after {DEFAULT_THRESHOLD} failures in a "
        f"row, {DEFAULT_TIMEOUT:g} s attempt timeout, at most 20 attempts in flight per "
        "endpoint (the rest back off 1 s). A holding endpoint never completes an attempt "
        "within a run, so its breaker cannot open; the per-endpoint cap and the separate lanes "
        "are what protect the others there.",
        "Attempts at the other merchant's endpoint per run: "
        + "; ".join(f"{kind} {values}" for kind, values in other.items())
        + ". After each run its endpoint is deleted, its lanes terminated and held "
        "connections dropped.",
        "Slowdown verdict (a slowdown counts if the dead runs' median is worse than every "
        "live run: lower deliveries/s, higher latency): " + "; ".join(verdicts) + ".",
    ]
    notes += _unfinished_note([run for runs in dead.runs.values() for run in runs])
    return Section(
        title="Deliveries — a dead endpoint beside healthy ones",
        baseline=(
            "the same burst with the other merchant's endpoint answering 200 (alive instead of "
            "dead), alternated with the dead runs."
        ),
        rows=rows,
        notes=notes,
    )


def _worse(row: Row) -> bool:
    """Whether the median is worse than every baseline run (throughput lower, latency higher)."""
    finite = [v for v in row.baseline_runs if not math.isnan(v)]
    if not finite or math.isnan(row.value):
        return False
    return row.value < min(finite) if row.unit == "/s" else row.value > max(finite)


def _unfinished_note(runs: list[Run]) -> list[str]:
    unfinished = sum(run.unfinished for run in runs)
    not_accepted = sum(run.not_accepted for run in runs)
    if not unfinished and not not_accepted:
        return []
    return [
        f"⚠ {not_accepted} webhooks not accepted and {unfinished} measured deliveries not "
        "succeeded within the settle timeout, over all runs; figures count finished ones only."
    ]


def _stats_text(stats: dict[str, int]) -> str:
    return ", ".join(f"{key} {value:,}" for key, value in sorted(stats.items())) or "—"
