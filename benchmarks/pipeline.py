"""Pipeline benchmark: from a webhook's receipt to its merchant event published, and its cost.

The api and the worker (with the relay) run as separate processes, as in production; webhooks
are new payments (:mod:`benchmarks.workload`). Every figure is read from Postgres or Temporal,
not from the client:

1. Receipt-to-published latency (``webhooks.published_at - webhooks.received_at``) at a steady
   offered rate (open loop). Baseline: start-to-result latency of a no-op workflow at the same
   rate on the same Temporal server (:meth:`NoopWorkflows.round_trips`).
2. End-to-end throughput of a burst: N webhooks sent as fast as the ingress takes them, counted
   from the first send until the last one reached a final status (``processed_at``). Baseline:
   ``client.start_workflow`` ceiling for N starts at the relay's concurrency, no worker
   (:meth:`NoopWorkflows.start_ceiling`).
3. Temporal cost per webhook from a sample of the completed workflows' histories (see
   :mod:`benchmarks.actions`), against the no-op workflow's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import asyncpg

from benchmarks.actions import ACTION_RULES, MeanCost, history_costs, mean_cost
from benchmarks.harness import FINAL_STATUSES, Harness, Pairs, settle
from benchmarks.http_load import LoadResult, RawClient, closed_loop, open_loop
from benchmarks.plan import Plan
from benchmarks.report import Row, Section, Target
from benchmarks.stack import HOST
from benchmarks.stats import Latency
from benchmarks.temporal_baseline import NoopWorkflows, RoundTrips
from benchmarks.workload import SignedWebhook, payment_webhooks
from core.contracts import webhook_workflow_id
from core.settings import Settings

__all__ = ["measure_pipeline"]

STEADY_CONNECTIONS = 4
WARM_UP_WEBHOOKS = 5
LATENCY_TARGET_MS = 100.0
THROUGHPUT_TARGET = 0.6
RELAY_START_CONCURRENCY: int = Settings.model_fields["relay_start_concurrency"].default


@dataclass(frozen=True)
class SteadyRun:
    """One steady-rate run, as recorded in Postgres."""

    published: Latency
    relay: Latency
    """Receipt until the relay asked Temporal to start the workflow."""
    accepted: int
    not_accepted: int
    unsettled: int
    """Accepted but not in a final status when the settle timeout was up."""
    workflow_ids: list[str]
    """Of the settled webhooks."""


@dataclass(frozen=True)
class BurstRun:
    """One burst, as recorded in Postgres."""

    throughput: float
    not_accepted: int
    unsettled: int
    workflow_ids: list[str]
    """Of the settled webhooks."""


@dataclass(frozen=True)
class PipelineResults:
    """Every run of the pipeline measurement, and the sampled Temporal costs per run."""

    steady: Pairs[RoundTrips, SteadyRun]
    burst: Pairs[float, BurstRun]
    steady_cost: list[MeanCost]
    burst_cost: list[MeanCost]
    noop_cost: list[MeanCost]


async def measure_pipeline(h: Harness) -> Section:
    """Steady latency, burst throughput and Temporal cost; one report section."""
    noop = NoopWorkflows(h.temporal)
    async with noop.worker():
        await _warm_up(h, noop)
        steady = await h.alternate(
            f"pipeline {h.plan.pipeline_rate:g}/s",
            lambda: noop.round_trips(
                h.plan.pipeline_rate, h.plan.pipeline_baseline_seconds, grace=h.plan.settle_timeout
            ),
            lambda: _steady_run(h),
        )
    burst = await h.alternate(
        f"pipeline burst of {h.plan.burst}",
        lambda: noop.start_ceiling(h.plan.burst, RELAY_START_CONCURRENCY),
        lambda: _burst_run(h),
    )
    results = PipelineResults(
        steady=steady,
        burst=burst,
        steady_cost=[await _cost(h, run.workflow_ids) for run in steady.subject],
        burst_cost=[await _cost(h, run.workflow_ids) for run in burst.subject],
        noop_cost=[await _cost(h, run.workflow_ids) for run in steady.baseline],
    )
    return _section(h.plan, results)


async def _warm_up(h: Harness, noop: NoopWorkflows) -> None:
    """Send a few webhooks and no-op workflows through, so no run pays first-use costs."""
    requests = _webhooks(h, WARM_UP_WEBHOOKS)
    await _send(h, requests, rate=20)
    await _settle(h, requests)
    await noop.round_trips(rate=20, seconds=0.5, grace=h.plan.settle_timeout)


async def _steady_run(h: Harness) -> SteadyRun:
    plan = h.plan
    requests = _webhooks(h, int(plan.pipeline_rate * plan.pipeline_seconds))
    load = await _send(h, requests, rate=plan.pipeline_rate)
    rows = await _settle(h, requests)
    settled = [row for row in rows if row["status"] in FINAL_STATUSES]
    return SteadyRun(
        published=Latency.of(_seconds_between(rows, "received_at", "published_at")),
        relay=Latency.of(_seconds_between(rows, "received_at", "workflow_started_at")),
        accepted=load.accepted,
        not_accepted=load.failed,
        unsettled=load.accepted - len(settled),
        workflow_ids=_workflow_ids(h, settled),
    )


async def _burst_run(h: Harness) -> BurstRun:
    requests = _webhooks(h, h.plan.burst)
    load = await _send(h, requests, rate=None)
    rows = await _settle(h, requests)
    settled = [row for row in rows if row["status"] in FINAL_STATUSES]
    last = max((row["processed_at"] for row in settled), default=None)
    elapsed = last.timestamp() - load.first_send_wall if last is not None else math.nan
    return BurstRun(
        throughput=len(settled) / elapsed,
        not_accepted=load.failed,
        unsettled=load.accepted - len(settled),
        workflow_ids=_workflow_ids(h, settled),
    )


async def _cost(h: Harness, workflow_ids: list[str]) -> MeanCost:
    """Mean cost of the first ``history_sample`` workflows of a run."""
    sample = workflow_ids[: h.plan.history_sample]
    return mean_cost(await history_costs(h.temporal, sample, timeout=h.plan.settle_timeout))


async def _send(h: Harness, requests: list[SignedWebhook], *, rate: float | None) -> LoadResult:
    """Send to the api at ``rate``/s (open loop), or with ``rate=None`` all at once over
    ``connections`` (closed loop); answers are awaited up to the settle timeout."""
    plan = h.plan
    connections = STEADY_CONNECTIONS if rate is not None else plan.connections
    client = await RawClient(HOST, h.stack.api_port, connections).open()
    try:
        if rate is not None:
            return await open_loop(client, requests, rate, grace=plan.settle_timeout)
        return await closed_loop(
            client, requests, connections, plan.settle_timeout, grace=plan.settle_timeout
        )
    finally:
        await client.aclose()


async def _settle(h: Harness, requests: list[SignedWebhook]) -> list[asyncpg.Record]:
    webhook_ids = [r.webhook_id for r in requests]
    return await settle(h.pool, h.stack.partner_id, webhook_ids, h.plan.settle_timeout)


def _webhooks(h: Harness, count: int) -> list[SignedWebhook]:
    stack = h.stack
    return payment_webhooks(
        stack.partner_id, stack.partner_secret, count, host=f"{HOST}:{stack.api_port}"
    )


def _workflow_ids(h: Harness, rows: list[asyncpg.Record]) -> list[str]:
    return [webhook_workflow_id(h.stack.partner_id, row["webhook_id"]) for row in rows]


def _seconds_between(rows: list[asyncpg.Record], start: str, end: str) -> list[float]:
    return [
        (row[end] - row[start]).total_seconds()
        for row in rows
        if row[start] is not None and row[end] is not None
    ]


def _section(plan: Plan, results: PipelineResults) -> Section:
    rate = f"{plan.pipeline_rate:g}/s"
    steady, round_trips = results.steady.subject, results.steady.baseline
    steady_cpu, round_trips_cpu = results.steady.subject_cpu, results.steady.baseline_cpu
    noop_p50 = [r.latency.p50_ms for r in round_trips]
    noop_p99 = [r.latency.p99_ms for r in round_trips]

    def cpu_row(figure: str, process: str, baseline_process: str) -> Row:
        return Row(
            figure,
            "ms",
            [
                use.ms_per(process, run.accepted)
                for run, use in zip(steady, steady_cpu, strict=True)
            ],
            [
                use.ms_per(baseline_process, len(trips.workflow_ids))
                for trips, use in zip(round_trips, round_trips_cpu, strict=True)
            ],
        )

    def cost_row(figure: str, costs: list[MeanCost], field: str) -> Row:
        return Row(
            figure,
            "",
            [getattr(c, field) for c in costs],
            [getattr(c, field) for c in results.noop_cost],
        )

    rows = [
        Row(
            f"End-to-end webhooks/s, burst of {plan.burst} (baseline: raw start_workflow/s)",
            "/s",
            [b.throughput for b in results.burst.subject],
            results.burst.baseline,
            Target(">=", THROUGHPUT_TARGET, on_ratio=True),
        ),
        Row(
            f"Receipt→published p50 at {rate}", "ms", [s.published.p50_ms for s in steady], noop_p50
        ),
        Row(
            f"Receipt→published p99 at {rate}",
            "ms",
            [s.published.p99_ms for s in steady],
            noop_p99,
            Target("<=", LATENCY_TARGET_MS, "ms"),
        ),
        Row(
            "…of which receipt→workflow start (relay hop) p99",
            "ms",
            [s.relay.p99_ms for s in steady],
            noop_p99,
        ),
        cpu_row(
            f"Worker-process CPU per webhook at {rate} (baseline: benchmark process, client and "
            "worker, per no-op workflow)",
            "worker",
            "bench",
        ),
        cpu_row(f"Temporal-server CPU per webhook at {rate}", "temporal", "temporal"),
        cost_row("History events per webhook", results.steady_cost, "events"),
        cost_row("Workflow tasks per webhook", results.steady_cost, "workflow_tasks"),
        cost_row("Temporal Cloud actions per webhook", results.steady_cost, "actions"),
        cost_row("Workflow tasks per webhook, in the burst", results.burst_cost, "workflow_tasks"),
        cost_row("Temporal Cloud actions per webhook, in the burst", results.burst_cost, "actions"),
    ]
    return Section(
        title="Pipeline — receipt to published merchant event",
        baseline=(
            f"the same Temporal server running a no-op workflow: start→result at {rate} (eager "
            "start, worker in the benchmark process) for latencies and history costs; "
            f"`start_workflow` ceiling ({plan.burst} starts, {RELAY_START_CONCURRENCY} at a time, "
            "no worker) for throughput."
        ),
        rows=rows,
        notes=_notes(plan, results),
    )


def _notes(plan: Plan, results: PipelineResults) -> list[str]:
    runs: list[SteadyRun | BurstRun] = [*results.steady.subject, *results.burst.subject]
    not_accepted = sum(run.not_accepted for run in runs)
    unsettled = sum(run.unsettled for run in runs)
    breakdown = results.steady_cost[0].breakdown if results.steady_cost else {}
    notes = [
        f"Steady: {plan.pipeline_rate:g} webhooks/s for {plan.pipeline_seconds:.1f} s per run, "
        f"open loop; latencies from Postgres timestamps. Burst: {plan.burst} webhooks over "
        f"{plan.connections} connections, closed loop; throughput = settled webhooks / (last "
        "`processed_at` - first send).",
        "Actions per webhook at the steady rate, first run's sample: "
        + (", ".join(f"{name} {n:.2f}" for name, n in breakdown.items()) or "—")
        + f". Counting: {ACTION_RULES}.",
        f"Histories sampled: the first {plan.history_sample} workflows of each run.",
    ]
    if not_accepted or unsettled:
        notes.append(
            f"⚠ {not_accepted} webhooks not accepted and {unsettled} accepted but not settled "
            f"within {plan.settle_timeout:g} s, over all runs; figures count settled ones only."
        )
    return notes
