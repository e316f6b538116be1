"""Ingress benchmark: ack latency and throughput of ``POST /webhooks/{partner}``, vs a bare app.

The api runs as ``switchboard api`` does while the worker drains the inbox (what earlier phases
and these runs recorded), so they compete for the machine as in production. The baseline is
:mod:`benchmarks.bare_ingress`, which only verifies the signature. Both get the same kind of
pre-signed requests from :class:`RawClient` over the same number of keep-alive connections.

1. Fixed offered rate, open loop: ack latency p50/p99 measured from each request's due time,
   and accepted webhooks/s; plus the CPU each process spends per accepted webhook.
2. Saturation, closed loop with ``connections`` concurrent requests: accepted/s and ack latency.

:func:`measure_load_generator` checks the load generator itself: the bare app at saturation
driven by ``httpx.AsyncClient`` versus the raw client, so a figure capped by the client shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from benchmarks.harness import Harness, Pairs
from benchmarks.http_load import Client, HttpxClient, LoadResult, RawClient, closed_loop, open_loop
from benchmarks.plan import Plan
from benchmarks.report import Row, Section, Target
from benchmarks.stack import HOST, CpuUse
from benchmarks.workload import SignedWebhook, payment_webhooks

__all__ = ["measure_ingress", "measure_load_generator"]

ACK_P99_TARGET_MS = 20.0
SATURATION_PRESIGN_RATE = 5000
"""Requests signed per second of a saturation run: more than two cores can serve."""
ClientKind = Literal["raw", "httpx"]


@dataclass(frozen=True)
class IngressRun:
    """One load run against one app, and the inbox backlog when it started."""

    load: LoadResult
    backlog: int


async def measure_ingress(h: Harness) -> Section:
    """Fixed-rate and saturation runs against the api and the bare app; one report section."""
    plan, stack = h.plan, h.stack
    fixed = await h.alternate(
        f"ingress {plan.ingress_rate:g}/s",
        lambda: _open_loop_run(h, stack.bare_port, plan.ingress_baseline_seconds),
        lambda: _open_loop_run(h, stack.api_port, plan.ingress_seconds),
    )
    saturation = await h.alternate(
        "ingress saturation",
        lambda: _saturation_run(h, stack.bare_port, "raw", plan.saturation_seconds),
        lambda: _saturation_run(h, stack.api_port, "raw", plan.saturation_seconds),
    )
    return _ingress_section(plan, fixed, saturation)


async def measure_load_generator(h: Harness) -> Section:
    """The bare app at saturation, driven by the raw client and by httpx."""
    pairs = await h.alternate(
        "load generator check (bare app)",
        lambda: _saturation_run(h, h.stack.bare_port, "raw", h.plan.loadgen_seconds),
        lambda: _saturation_run(h, h.stack.bare_port, "httpx", h.plan.loadgen_seconds),
    )
    httpx_rate = Row(
        "Bare app at saturation, requests/s",
        "/s",
        [run.load.throughput for run in pairs.subject],
        [run.load.throughput for run in pairs.baseline],
    )
    bench_cpu = Row(
        "Benchmark-process CPU per request",
        "ms",
        _cpu_ms(pairs.subject, pairs.subject_cpu, "bench", lambda load: load.sent),
        _cpu_ms(pairs.baseline, pairs.baseline_cpu, "bench", lambda load: load.sent),
    )
    verdict = (
        "httpx would cap the load (fewer requests/s than the raw client): the suite sends with "
        "the raw client."
        if httpx_rate.ratio < 0.9
        else "httpx keeps up with the raw client here; the suite sends with the raw client anyway."
    )
    return Section(
        title="Load generator check",
        baseline=f"the raw asyncio client ({h.plan.connections} keep-alive connections).",
        rows=[httpx_rate, bench_cpu],
        notes=[verdict],
        subject="httpx.AsyncClient",
    )


async def _open_loop_run(h: Harness, port: int, seconds: float) -> IngressRun:
    plan = h.plan
    requests = _webhooks(h, port, int(plan.ingress_rate * seconds))
    backlog = await h.inbox_backlog()
    client = await _client("raw", port, plan.connections)
    try:
        load = await open_loop(client, requests, plan.ingress_rate, grace=plan.grace)
    finally:
        await client.aclose()
    return IngressRun(load, backlog)


async def _saturation_run(h: Harness, port: int, kind: ClientKind, seconds: float) -> IngressRun:
    connections = h.plan.connections
    requests = _webhooks(h, port, int(seconds * SATURATION_PRESIGN_RATE) + connections)
    backlog = await h.inbox_backlog()
    client = await _client(kind, port, connections)
    try:
        load = await closed_loop(client, requests, connections, seconds, grace=h.plan.grace)
    finally:
        await client.aclose()
    return IngressRun(load, backlog)


async def _client(kind: ClientKind, port: int, connections: int) -> Client:
    if kind == "httpx":
        return await HttpxClient(f"http://{HOST}:{port}", connections).open()
    return await RawClient(HOST, port, connections).open()


def _webhooks(h: Harness, port: int, count: int) -> list[SignedWebhook]:
    return payment_webhooks(
        h.stack.partner_id, h.stack.partner_secret, count, host=f"{HOST}:{port}"
    )


def _cpu_ms(
    runs: list[IngressRun], cpu: list[CpuUse], process: str, count: Callable[[LoadResult], int]
) -> list[float]:
    """Milliseconds of ``process`` CPU per counted request, for each run."""
    return [use.ms_per(process, count(run.load)) for run, use in zip(runs, cpu, strict=True)]


def _ingress_section(
    plan: Plan,
    fixed: Pairs[IngressRun, IngressRun],
    saturation: Pairs[IngressRun, IngressRun],
) -> Section:
    rate = f"{plan.ingress_rate:g}/s offered"

    def figure(
        pairs: Pairs[IngressRun, IngressRun], of: Callable[[LoadResult], float]
    ) -> tuple[list[float], list[float]]:
        return [of(run.load) for run in pairs.subject], [of(run.load) for run in pairs.baseline]

    censored = any(run.load.latency_is_lower_bound for run in fixed.subject)

    rows = [
        Row(
            f"Ack p50 at {rate}",
            "ms",
            *figure(fixed, lambda r: r.latency.p50_ms),
            at_least=censored,
        ),
        Row(
            f"Ack p99 at {rate}",
            "ms",
            *figure(fixed, lambda r: r.latency.p99_ms),
            Target("<=", ACK_P99_TARGET_MS, "ms"),
            at_least=censored,
        ),
        Row(f"Accepted webhooks/s at {rate}", "/s", *figure(fixed, lambda r: r.throughput)),
        Row(
            f"Not accepted at {rate} (errors + unanswered)",
            "",
            *figure(fixed, lambda r: float(r.failed)),
        ),
        Row(
            f"Server CPU per accepted webhook at {rate} (api vs bare app)",
            "ms",
            _cpu_ms(fixed.subject, fixed.subject_cpu, "api", lambda load: load.accepted),
            _cpu_ms(fixed.baseline, fixed.baseline_cpu, "bare", lambda load: load.accepted),
        ),
        Row(
            f"Saturation webhooks/s ({plan.connections} connections)",
            "/s",
            *figure(saturation, lambda r: r.throughput),
        ),
        Row("Saturation ack p50", "ms", *figure(saturation, lambda r: r.latency.p50_ms)),
        Row("Saturation ack p99", "ms", *figure(saturation, lambda r: r.latency.p99_ms)),
    ]
    backlog = [run.backlog for run in fixed.subject]
    unanswered = [run.load.unanswered for run in fixed.subject]
    return Section(
        title="Ingress — POST /webhooks/{partner} until the 2xx",
        baseline=(
            "a bare FastAPI app (`benchmarks/bare_ingress.py`) that only verifies the signature "
            "with `core.signing.verify` and answers 202, served with the same uvicorn options."
        ),
        rows=rows,
        notes=[
            f"Fixed rate: open loop, {plan.ingress_seconds:.1f} s per run for the api and "
            f"{plan.ingress_baseline_seconds:.1f} s for the bare app, latency from each request's "
            f"due time; requests unanswered {plan.grace:g} s after the last due time "
            f"count with their waiting time so far (≥ marks a figure that includes them). "
            f"Unanswered per api run: {unanswered}.",
            f"Worker draining: webhooks not yet final in the inbox when each api run started: "
            f"{backlog}. The bare-app runs alternate with the api runs, so they share that "
            "background load.",
            f"Saturation: closed loop, {plan.connections} connections, "
            f"{plan.saturation_seconds:g} s per run.",
        ],
    )
