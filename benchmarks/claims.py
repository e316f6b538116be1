"""Exchange-claim benchmark (issue 10): 50 operators claim each exchange request at once through
the real api, beside a bare ``SELECT … FOR UPDATE`` claim transaction on the same Postgres.

Switchboard side: ``plan.claim_requests`` pending exchange requests (created through
:func:`core.exchange.create` before the runs, not measured, and left until their workflows have
started and recorded them pending, as a desk's queue is), and 50 operators, each with an API
key of its own (``read`` and ``replay`` scopes, as the desk has). Request *r* is due at
``r / plan.claim_rate`` s; at its due time all 50 operators send
``POST /v1/exchange-requests/{id}/claim`` at once, over 50 keep-alive connections of
:class:`benchmarks.http_load.RawClient` to the api process (:func:`benchmarks.pacing.burst_loop`,
open loop: a slow answer also counts against every claim queued behind it).

Baseline: the same number of rows of a bare table (id, assignee), the same schedule, and 50
asyncpg connections from this process racing for each row: ``BEGIN; SELECT assignee … FOR
UPDATE``; the first to find it free sets it; ``COMMIT``. So the ratio is what the api, its auth,
its pool, the state machine's checks and trigger and the audit entry add to the bare race.

Every claim's latency runs from its request's due time to its answer. A request must have exactly
one winner (200) and 49 losers (409); anything else (5xx, a transport error, no answer in time) is
counted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from api.auth import create_api_key
from benchmarks.harness import Harness, Pairs, progress
from benchmarks.http_load import RawClient
from benchmarks.pacing import Paced, burst_loop
from benchmarks.report import Row, Section, Target
from benchmarks.stack import HOST
from benchmarks.stats import Latency, median
from benchmarks.workload import request_wire
from core import exchange
from core.db import connect_pool
from core.settings import Settings
from core.tenancy import create_merchant
from core.workflow_starts import wake_relay

__all__ = ["measure_claims"]

CLAIMERS = 50
WON = 200
LOST = 409
P99_TARGET_RATIO = 2.0
GRACE = 10.0
"""Seconds after the last request's due time within which every claim must be answered."""
BARE_TABLE = "bench_bare_claims"
ACTOR = "bench"
SETTLE_SECONDS = 60.0
"""How long new requests' workflows may take to start and record them as pending."""
POOL_SIZE = Settings.model_fields["database_pool_size"].default


@dataclass(frozen=True)
class Operator:
    """One claimer: its audit name and its API key."""

    actor: str
    key: str


@dataclass(frozen=True)
class ClaimRun:
    """One run of either side: every claim's answer and latency, per request."""

    requests: int
    latency: Latency
    last_answer_ms: float
    """Median over requests of the latency of the last of its 50 answers."""
    not_won_once: int
    """Requests without exactly one winner and 49 losers."""
    other_answers: int
    """Claims answered neither 200 nor 409, or not at all in time."""


async def measure_claims(h: Harness) -> Section:
    """The claim benchmark (see the module docstring); one report section."""
    with progress(f"creating {CLAIMERS} operators"):
        merchant, desk = await _set_up(h.pool)
    with progress(f"creating {h.plan.repeats} x {h.plan.claim_requests} exchange requests"):
        batches = [await _pending_requests(h, merchant) for _ in range(h.plan.repeats)]
    claimers = await connect_pool(h.stack.database_url, size=CLAIMERS)
    try:
        phase = f"exchange claims, {CLAIMERS} claimers per request"
        pairs = await h.alternate(
            phase,
            lambda: _bare_run(h, claimers),
            lambda: _api_run(h, batches.pop(0), desk),
        )
    finally:
        await claimers.close()
    return _section(h, pairs)


async def _set_up(pool: asyncpg.Pool) -> tuple[str, list[Operator]]:
    tag = uuid.uuid4().hex[:6]
    merchant = f"bench-exchange-{tag}"
    desk = []
    async with pool.acquire() as conn:
        await create_merchant(conn, merchant, name=None, email=None, partner_ids=[], actor=ACTOR)
        for n in range(CLAIMERS):
            name = f"desk-{tag}-{n:02d}"
            key_id, key = await create_api_key(conn, name, ["read", "replay"], actor=ACTOR)
            desk.append(Operator(f"api-key:{key_id}:{name}", key))
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {BARE_TABLE} (id text PRIMARY KEY, assignee text)"
        )
    return merchant, desk


async def _pending_requests(h: Harness, merchant: str) -> list[str]:
    """``plan.claim_requests`` new pending requests, once their workflows have started and
    done their first work (read the request, recorded it as pending): what a desk finds in
    its queue, so a run measures claims, not the creation of what it claims."""
    requests = []
    async with h.pool.acquire() as conn:
        for _ in range(h.plan.claim_requests):
            row = await exchange.create(
                conn,
                merchant_id=merchant,
                customer_id=f"c-{uuid.uuid4().hex[:10]}",
                from_amount=10_000,
                from_currency="EUR",
                to_currency="USDT",
                quote=None,
                actor=ACTOR,
            )
            requests.append(row["id"])
        await wake_relay(conn)
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        settled = await h.pool.fetchval(
            "SELECT count(*) FROM exchange_analytics_events WHERE request_id = ANY($1)", requests
        )
        if settled == len(requests):
            return requests
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the workflows of {len(requests)} new requests did not settle in time")


async def _api_run(h: Harness, requests: list[str], desk: list[Operator]) -> ClaimRun:
    host = f"{HOST}:{h.stack.api_port}"

    def claim(request_id: str, operator: Operator) -> bytes:
        path = f"/v1/exchange-requests/{request_id}/claim"
        return request_wire(host, path, {"authorization": f"Bearer {operator.key}"}, b"")

    # Fresh connections each run (the api closes idle keep-alives), warmed up on a request that
    # does not exist (404), so the run meets open connections and a warm api.
    client = await RawClient(HOST, h.stack.api_port, CLAIMERS).open()
    try:
        missing = f"exr_{uuid.uuid4().hex}"
        warm = [claim(missing, operator) for operator in desk]
        await burst_loop([warm], 1.0, client.send_wire, grace=GRACE)
        bursts = [[claim(r, operator) for operator in desk] for r in requests]
        paced = await burst_loop(bursts, h.plan.claim_rate, client.send_wire, grace=GRACE)
    finally:
        await client.aclose()
    return _claim_run(paced, len(requests))


async def _bare_run(h: Harness, claimers: asyncpg.Pool) -> ClaimRun:
    rows = [f"bare_{uuid.uuid4().hex}" for _ in range(h.plan.claim_requests)]
    await h.pool.execute(f"INSERT INTO {BARE_TABLE} (id) SELECT unnest($1::text[])", rows)

    async def claim(attempt: tuple[str, str]) -> int:
        row_id, actor = attempt
        async with claimers.acquire() as conn, conn.transaction():
            assignee = await conn.fetchval(
                f"SELECT assignee FROM {BARE_TABLE} WHERE id = $1 FOR UPDATE", row_id
            )
            if assignee is not None:
                return LOST
            await conn.execute(
                f"UPDATE {BARE_TABLE} SET assignee = $2 WHERE id = $1", row_id, actor
            )
            return WON

    warm = [(f"bare_missing_{n}", f"claimer-{n}") for n in range(CLAIMERS)]
    await burst_loop([warm], 1.0, claim, grace=GRACE)
    bursts = [[(row_id, f"claimer-{n}") for n in range(CLAIMERS)] for row_id in rows]
    paced = await burst_loop(bursts, h.plan.claim_rate, claim, grace=GRACE)
    return _claim_run(paced, len(rows))


def _claim_run(paced: Paced[int], requests: int) -> ClaimRun:
    outcomes = paced.outcomes
    last_answers = []
    not_won_once = 0
    other = 0
    for r in range(requests):
        burst = outcomes[r * CLAIMERS : (r + 1) * CLAIMERS]
        statuses = Counter(o.value if o.finished else None for o in burst)
        if statuses != Counter({WON: 1, LOST: CLAIMERS - 1}):
            not_won_once += 1
        other += sum(n for status, n in statuses.items() if status not in (WON, LOST))
        last_answers.append(max(o.latency for o in burst) * 1000)
    return ClaimRun(
        requests=requests,
        latency=Latency.of([o.latency for o in outcomes]),
        last_answer_ms=median(last_answers),
        not_won_once=not_won_once,
        other_answers=other,
    )


def _section(h: Harness, pairs: Pairs[ClaimRun, ClaimRun]) -> Section:
    plan = h.plan
    claims = plan.claim_requests * CLAIMERS

    def both(figure: Callable[[ClaimRun], float]) -> tuple[list[float], list[float]]:
        return [float(figure(r)) for r in pairs.subject], [float(figure(r)) for r in pairs.baseline]

    def cpu(process: str | None = None) -> tuple[list[float], list[float]]:
        return (
            [use.ms_per(process, claims) for use in pairs.subject_cpu],
            [use.ms_per(process, claims) for use in pairs.baseline_cpu],
        )

    rows = [
        Row("Claim latency p50 (due → answer)", "ms", *both(lambda r: r.latency.p50_ms)),
        Row(
            "Claim latency p99 (due → answer)",
            "ms",
            *both(lambda r: r.latency.p99_ms),
            Target("<=", P99_TARGET_RATIO, on_ratio=True),
        ),
        Row("Claim latency max", "ms", *both(lambda r: r.latency.max_ms)),
        Row(
            f"Last of a request's {CLAIMERS} answers (median over requests)",
            "ms",
            *both(lambda r: r.last_answer_ms),
        ),
        Row(
            f"Requests not won exactly once (one 200, {CLAIMERS - 1} 409s)",
            "",
            *both(lambda r: r.not_won_once),
            Target("<=", 0),
        ),
        Row(
            "Claims answered neither 200 nor 409 (5xx, errors, unanswered)",
            "",
            *both(lambda r: r.other_answers),
            Target("<=", 0),
        ),
        Row("CPU per claim, all stack processes", "ms", *cpu()),
        Row("CPU per claim, api", "ms", *cpu("api")),
        Row("CPU per claim, Postgres", "ms", *cpu("postgres")),
    ]
    notes = [
        f"{plan.repeats} runs (medians shown), each {plan.claim_requests} exchange requests due "
        f"{1 / plan.claim_rate:g} s apart (open loop), all {CLAIMERS} claims of a request sent "
        f"at its due time; {CLAIMERS * plan.claim_requests:,} claims per run. Latency runs from "
        "the request's due time to each claim's answer, so the wait behind the other 49 (and "
        "behind an earlier request still draining) counts.",
        f"Switchboard: `POST /v1/exchange-requests/{{id}}/claim` with {CLAIMERS} operators' own "
        f"API keys, {CLAIMERS} keep-alive connections (opened and warmed up on a missing request "
        "before each run) to the api process, whose Postgres pool has "
        f"{POOL_SIZE} connections (the default); each claim authenticates its key, "
        "locks the row, checks the state machine, writes and audits in one transaction.",
        f"Baseline: {CLAIMERS} asyncpg connections from the benchmark process, one transaction "
        f"per claim on a bare `{BARE_TABLE} (id, assignee)` row: `SELECT assignee … FOR UPDATE`,"
        " `UPDATE` if free, `COMMIT`.",
        "CPU per claim includes the benchmark process (the HTTP client on one side, the asyncpg"
        " claimers on the other).",
    ]
    return Section(
        title=f"Exchange claims — {CLAIMERS} operators claiming each request at once",
        baseline=f"a bare `SELECT … FOR UPDATE` claim transaction, {CLAIMERS} connections racing "
        "for each row, same schedule, same Postgres",
        rows=rows,
        notes=notes,
    )
