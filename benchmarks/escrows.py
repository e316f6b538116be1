"""Escrow benchmark (issue 9): escrows funded from two wallets and released to an external account
on the payout provider, end to end through the api, beside a no-op workflow on the same Temporal
server.

Each escrow has two source wallets of its own (opened and topped up before the run, through
:mod:`core.money`, not measured), so what is measured is the saga, not contention on a wallet
(:mod:`benchmarks.debits` measures that). One escrow's life, as a client sees it:
``POST /v1/escrows`` (sources 2 x 50, beneficiary an external ``account``) answered ``201``
``funded`` (or ``202``: then ``GET /v1/escrows/{id}`` until it is funded), then
``POST /v1/escrows/{id}/release`` answered ``200`` ``released`` (or ``202``: polled likewise).
The worker is restarted with its payout provider pointed at a :class:`PayoutSink` served by this
process, and restarted with its usual settings afterwards.

Each repeat measures:

* **Completion rate** — ``plan.escrow_batch`` escrows started at once
  (:func:`benchmarks.pacing.burst_loop`): escrows funded and released per second, from their
  common due time to the last release. Baseline: as many no-op workflows executed at once on the
  same Temporal server (:meth:`NoopWorkflows.completion_rate`, worker in this process).
* **Create→funded latency** — ``plan.escrow_steady`` escrows due at ``plan.escrow_rate``/s (open
  loop), each from its due time to the answer saying it is funded. Baseline: the no-op workflow's
  start-to-result latency at the same rate (:meth:`NoopWorkflows.round_trips`).

Then, to show how much of the gap is Temporal's own, the saga's shape with steps that do nothing
(:class:`SagaShapes`, the same calls on the same server) is run the same way as the batch, again
beside the no-op workflow: the most escrows per second this Temporal server could finish whatever
the steps cost, and the real escrows' rate against it.

An escrow that is not released is counted by where it stopped (the api's refusing answer, or the
status it was last seen in); the report's notes then say so, with those escrows' statuses in
Postgres and in their workflows once the runs are over, and the payout provider's breaker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from benchmarks.harness import Harness, Pairs, progress
from benchmarks.pacing import Paced, burst_loop, open_loop
from benchmarks.report import Row, Section, Target
from benchmarks.stack import HOST, CpuMeter
from benchmarks.stats import Latency
from benchmarks.temporal_baseline import NoopWorkflows, SagaShapes
from core import money
from core.settings import DEV_ADMIN_API_KEY
from core.tenancy import create_merchant
from devstack.payout_sink import PayoutSink
from devstack.ports import free_port

__all__ = ["measure_escrows"]

SOURCES = 2
AMOUNT = 50
"""Minor units each source puts in."""
CURRENCY = "EUR"
ACTOR = "bench"
RATE_TARGET = 0.5
GRACE = 60.0
"""Seconds after the last due time within which every escrow must have been released."""
POLL = 0.05
CONNECTIONS = 128
WARM_UP = 3
ADMIN = {"authorization": f"Bearer {DEV_ADMIN_API_KEY}"}


@dataclass(frozen=True)
class Life:
    """One escrow's life: when it was funded and released (``perf_counter``); ``None`` if it
    did not get there, and then ``stopped`` says where (the answer or status it ended on)."""

    funded: float | None
    released: float | None
    reference: str = ""
    stopped: str = ""


@dataclass(frozen=True)
class EscrowRun:
    """One repeat of either side: completion rate, create→funded latency, and failures."""

    per_second: float
    latency: Latency
    not_released: int
    stopped: Counter[str] = field(default_factory=Counter)
    """Escrows not released, by where they stopped."""
    stopped_references: list[str] = field(default_factory=list)


async def measure_escrows(h: Harness) -> Section:
    """The escrow benchmark (see the module docstring); one report section."""
    plan = h.plan
    merchant = f"bench-escrows-{uuid.uuid4().hex[:6]}"
    async with h.pool.acquire() as conn:
        await create_merchant(conn, merchant, name=None, email=None, partner_ids=[], actor=ACTOR)
    noop = NoopWorkflows(h.temporal)
    shapes = SagaShapes(h.temporal)
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    with PayoutSink(free_port(HOST)) as sink:
        try:
            with progress("restarting the worker with the payout sink"):
                h.stack.restart_worker({"PAYOUT_BASE_URL": sink.url})
                h.meter = CpuMeter(h.stack.pids())
            async with (
                httpx.AsyncClient(base_url=h.stack.api_url, limits=limits, timeout=GRACE) as http,
                noop.worker(),
                shapes.worker(),
            ):
                escrows = _Escrows(h, http, merchant)
                with progress("warming up"):
                    await escrows.batch(WARM_UP)
                    await noop.completion_rate(WARM_UP, grace=GRACE)
                    await shapes.completion_rate(WARM_UP, grace=GRACE)
                pairs: Pairs[EscrowRun, EscrowRun] = await h.alternate(
                    f"escrows, {plan.escrow_batch} at once and {plan.escrow_rate:g}/s",
                    lambda: _noop_run(h, noop),
                    escrows.run,
                )
                shape: Pairs[float, float] = await h.alternate(
                    f"the saga's Temporal shape, steps doing nothing, {plan.escrow_batch} at once",
                    lambda: noop.completion_rate(plan.escrow_batch, grace=GRACE),
                    lambda: shapes.completion_rate(plan.escrow_batch, grace=GRACE),
                )
        finally:
            with progress("restarting the worker with its usual settings"):
                h.stack.restart_worker({})
            h.meter = CpuMeter(h.stack.pids())
        afterwards = await _afterwards(h, pairs)
    return _section(h, pairs, shape, len(sink.transfers()), afterwards)


async def _afterwards(h: Harness, pairs: Pairs[EscrowRun, EscrowRun]) -> list[str]:
    """Where the escrows that were not released are now (Postgres, their workflows), and the
    payout provider's breaker, once the runs are over: what the report says of the misses."""
    references = [ref for run in pairs.subject for ref in run.stopped_references]
    stopped = sum((run.stopped for run in pairs.subject), Counter[str]())
    if not stopped:
        return []
    async with h.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, status FROM escrows WHERE reference = ANY($1)", references
        )
        statuses = Counter(row["status"] for row in rows)
        ids = [row["id"] for row in rows]
        breaker = await conn.fetch(
            "SELECT base_url, consecutive_failures, circuit_open_until, circuit_trips"
            " FROM providers"
        )
    workflows: Counter[str] = Counter()
    for escrow_id in ids[:20]:
        handle = h.temporal.get_workflow_handle(f"escrow:{escrow_id}")
        try:
            workflows[str(await handle.query("status"))] += 1
        except Exception as error:  # a diagnostic: any answer is one
            workflows[type(error).__name__] += 1
    return [
        "Not released, where they stopped (api answers, all runs): "
        + ", ".join(f"{why}: {n}" for why, n in stopped.most_common())
        + "; in Postgres after the runs: "
        + ", ".join(f"{status}: {n}" for status, n in statuses.most_common())
        + f"; their workflows (first {min(len(ids), 20)} queried): "
        + ", ".join(f"{status}: {n}" for status, n in workflows.most_common())
        + "; payout breaker: "
        + (
            ", ".join(
                f"{r['consecutive_failures']} failures, {r['circuit_trips']} trips, open until"
                f" {r['circuit_open_until']}"
                for r in breaker
            )
            or "never failed"
        )
        + "."
    ]


async def _noop_run(h: Harness, noop: NoopWorkflows) -> EscrowRun:
    plan = h.plan
    rate = await noop.completion_rate(plan.escrow_batch, grace=GRACE)
    trips = await noop.round_trips(
        plan.escrow_rate, plan.escrow_steady / plan.escrow_rate, grace=GRACE
    )
    return EscrowRun(rate, trips.latency, 0)


class _Escrows:
    """Escrows through the api, each funded from two fresh wallets and released."""

    def __init__(self, h: Harness, http: httpx.AsyncClient, merchant: str) -> None:
        self.h = h
        self.http = http
        self.merchant = merchant

    async def run(self) -> EscrowRun:
        plan = self.h.plan
        batch = await self.batch(plan.escrow_batch)
        released = [
            o.latency for o in batch.outcomes if o.finished and o.value and o.value.released
        ]
        steady = await open_loop(
            await self._bodies(plan.escrow_steady), plan.escrow_rate, self._life, grace=GRACE
        )
        funded = [
            # The outcome's latency runs from the due time to the release (when the call
            # returned): the funding came that much before it.
            o.latency - (o.value.released - o.value.funded)
            for o in steady.outcomes
            if o.finished and o.value and o.value.funded and o.value.released
        ]
        stopped = _stopped(batch, steady)
        return EscrowRun(
            len(released) / max(released) if released else 0.0,
            Latency.of(funded),
            sum(stopped.values()),
            stopped,
            [
                o.value.reference
                for paced in (batch, steady)
                for o in paced.outcomes
                if o.value and not o.value.released
            ],
        )

    async def batch(self, count: int) -> Paced[Life]:
        return await burst_loop([await self._bodies(count)], 1.0, self._life, grace=GRACE)

    async def _bodies(self, count: int) -> list[dict[str, Any]]:
        """``count`` escrow requests, each from two wallets of its own holding just enough."""
        bodies = []
        expires = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        async with self.h.pool.acquire() as conn:
            for _ in range(count):
                sources = []
                for _ in range(SOURCES):
                    wallet = await money.open_wallet(conn, self.merchant, CURRENCY, actor=ACTOR)
                    await money.top_up(
                        conn, wallet["id"], AMOUNT, key=f"bench:{uuid.uuid4().hex}", actor=ACTOR
                    )
                    sources.append({"wallet_id": wallet["id"], "amount": AMOUNT})
                bodies.append(
                    {
                        "merchant_id": self.merchant,
                        "currency": CURRENCY,
                        "sources": sources,
                        "beneficiary": {"account": f"acct_bench_{uuid.uuid4().hex[:8]}"},
                        "expires_at": expires,
                        "reference": f"bench-{uuid.uuid4().hex[:8]}",
                    }
                )
        return bodies

    async def _life(self, body: dict[str, Any]) -> Life:
        created = await self.http.post("/v1/escrows", json=body, headers=_keyed())
        if created.status_code not in (201, 202):
            return Life(None, None, body["reference"], f"create answered {_answer(created)}")
        escrow_id = created.json()["id"]
        funded, seen = await self._reach(created, escrow_id, "funded", ("created", "funding"))
        if funded is None:
            return Life(None, None, body["reference"], f"not funded: {seen}")
        release = await self.http.post(
            f"/v1/escrows/{escrow_id}/release", json={}, headers=_keyed()
        )
        if release.status_code not in (200, 202):
            return Life(funded, None, body["reference"], f"release answered {_answer(release)}")
        released, seen = await self._reach(release, escrow_id, "released", ("funded", "releasing"))
        stopped = "" if released else f"not released: {seen}"
        return Life(funded, released, body["reference"], stopped)

    async def _reach(
        self, answer: httpx.Response, escrow_id: str, status: str, pending: tuple[str, ...]
    ) -> tuple[float | None, str]:
        """When the escrow was seen in ``status``: at once from the answer, or by polling it
        while it is ``pending`` (after a 202); ``None`` if it ended elsewhere or took too long,
        with the status it was last seen in."""
        view = answer.json()
        deadline = time.monotonic() + GRACE
        while view["status"] in pending and time.monotonic() < deadline:
            await asyncio.sleep(POLL)
            view = (await self.http.get(f"/v1/escrows/{escrow_id}", headers=ADMIN)).json()
        seen = view["status"] if view["status"] not in pending else f"still {view['status']}"
        return (time.perf_counter() if view["status"] == status else None), seen


def _answer(response: httpx.Response) -> str:
    """A refused answer in a few words: its status and problem type."""
    try:
        problem = response.json().get("type", "")
    except ValueError:
        problem = ""
    return f"{response.status_code} {problem.rsplit('/', 1)[-1]}".strip()


def _keyed() -> dict[str, str]:
    return {**ADMIN, "Idempotency-Key": str(uuid.uuid4())}


def _stopped(*runs: Paced[Life]) -> Counter[str]:
    """Escrows not released, by where they stopped (cut off: still running at the grace's end)."""
    return Counter(
        (o.value.stopped if o.finished and o.value else "cut off")
        for paced in runs
        for o in paced.outcomes
        if not (o.finished and o.value and o.value.released)
    )


def _section(
    h: Harness,
    pairs: Pairs[EscrowRun, EscrowRun],
    shape: Pairs[float, float],
    transfers: int,
    afterwards: list[str],
) -> Section:
    plan = h.plan

    def both(figure: Callable[[EscrowRun], float]) -> tuple[list[float], list[float]]:
        return [float(figure(r)) for r in pairs.subject], [float(figure(r)) for r in pairs.baseline]

    escrows = plan.escrow_batch + plan.escrow_steady

    def cpu(process: str | None) -> tuple[list[float], list[float]]:
        return (
            [use.ms_per(process, escrows) for use in pairs.subject_cpu],
            [use.ms_per(process, escrows) for use in pairs.baseline_cpu],
        )

    rows = [
        Row(
            f"Completion rate, {plan.escrow_batch} at once (funded and released / s)",
            "/s",
            *both(lambda r: r.per_second),
            Target(">=", RATE_TARGET, on_ratio=True),
        ),
        Row(
            f"Ceiling: the saga's Temporal shape alone, steps doing nothing, {plan.escrow_batch}"
            " at once (/ s)",
            "/s",
            shape.subject,
            shape.baseline,
        ),
        Row(
            "Completion rate against that ceiling (escrows / saga shapes)",
            "/s",
            [r.per_second for r in pairs.subject],
            shape.subject,
        ),
        Row(
            f"Create→funded p50 at {plan.escrow_rate:g}/s (due → answer)",
            "ms",
            *both(lambda r: r.latency.p50_ms),
        ),
        Row(
            f"Create→funded p99 at {plan.escrow_rate:g}/s (due → answer)",
            "ms",
            *both(lambda r: r.latency.p99_ms),
        ),
        *(
            Row(f"CPU per escrow, {process or 'all stack processes'}", "ms", *cpu(process))
            for process in (None, "temporal", "worker", "api", "postgres")
        ),
        Row(
            "Escrows not released (failed, refused, or not in time)",
            "",
            *both(lambda r: r.not_released),
            Target("<=", 0),
        ),
    ]
    notes = [
        f"{plan.repeats} runs (medians shown). Each escrow: {SOURCES} sources of {AMOUNT} minor "
        "units, each a wallet of its own; beneficiary an external account on the payout sink "
        "(served by the benchmark process; the worker restarted to use it). Create and release "
        "through the api with the admin key and an Idempotency-Key each; the api waits for the "
        "outcome (SWITCHBOARD_ESCROW_WAIT_SECONDS, default 10) and a 202 is followed by polling "
        f"`GET /v1/escrows/{{id}}` every {POLL * 1000:g} ms.",
        f"Completion rate: {plan.escrow_batch} escrows (create, funded, release, released) "
        "started at once, divided by the time from their due time to the last release. "
        f"Baseline: {plan.escrow_batch} no-op workflows executed at once (eager start, a worker "
        "in the benchmark process) on the same Temporal server.",
        "Ceiling: the saga's calls on the same Temporal server with steps that do nothing "
        "(`benchmarks/saga_shape_workflow.py`: started without eager start as the api does, "
        "5 local steps and the expiry timer in the first task, a release update accepted then "
        "awaited, its task running a local step and the payout as a regular activity, then the "
        "settling step), a worker in the benchmark process; "
        f"{plan.escrow_batch} at once, beside {plan.escrow_batch} no-op workflows (alternated, "
        "its own runs). No implementation of this saga can finish escrows faster than this on "
        "this server and machine.",
        f"Create→funded: {plan.escrow_steady} escrows due at {plan.escrow_rate:g}/s (open loop), "
        "from each due time to the answer saying funded. Baseline: the no-op workflow's "
        "start-to-result latency at the same rate.",
        f"CPU per escrow: each run's CPU ({escrows} escrows: the batch and the steady stream)"
        " divided by its escrows; baseline: per no-op workflow (its worker runs in the"
        " benchmark process, counted under all stack processes).",
        f"The payout sink recorded {transfers:,} transfers over the whole benchmark (warm-up "
        "included).",
        *afterwards,
    ]
    return Section(
        title="Escrows end to end — two sources each, released to an external account",
        baseline="a no-op workflow on the same Temporal server, in the same run",
        rows=rows,
        notes=notes,
    )
