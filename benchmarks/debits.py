"""Contended-debit benchmark (issue 9): 200 concurrent debits of one wallet through
:func:`core.money.post`, beside a bare conditional ``UPDATE`` of a balance on the same Postgres.

Switchboard side: one wallet, topped up before each run with enough for every debit of the run.
Burst *b* is due at ``b / plan.debit_rate`` s; at its due time 200 debits of 1 are made at once
(:func:`benchmarks.pacing.burst_loop`, open loop), each as the escrow saga's funding step will
make it: :func:`core.money.post` moving 1 from the wallet to an escrow holding account of its own
(a ``ledger_accounts`` row of kind ``escrow``, created before the run), with the key
``escrow:{id}:debit:{wallet}``, in its own transaction (key, checks, audit entry, the locked
posting, the balance trigger and CHECK, the commit-time balance check).

Baseline: a bare ``wallets (id, balance)`` table, one row with the same funds, the same bursts
and schedule, each debit one autocommitted
``UPDATE … SET balance = balance - $1 WHERE id = $2 AND balance >= $1``.

Both sides share one pool of :data:`CONNECTIONS` connections in this process (the embedded
Postgres allows 100, and the api and worker hold some), so the 200 debits of a burst queue for a
connection and then for the wallet's row lock alike. Latency runs from the burst's due time to
each debit's commit; a burst drains at 200 / (its last debit's latency).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from benchmarks.harness import Harness, Pairs, progress
from benchmarks.pacing import Paced, burst_loop
from benchmarks.report import Row, Section, Target
from benchmarks.stats import Latency, median
from core import money
from core.db import connect_pool
from core.errors import InsufficientFunds
from core.tenancy import create_merchant

__all__ = ["measure_debits"]

DEBITS = 200
"""Concurrent debits of the one wallet per burst."""
CONNECTIONS = 50
AMOUNT = 1
CURRENCY = "EUR"
P99_TARGET_RATIO = 3.0
GRACE = 30.0
"""Seconds after the last burst's due time within which every debit must have committed."""
BARE_TABLE = "bench_bare_wallets"
ACTOR = "bench"
WARM_UP = 20


@dataclass(frozen=True)
class DebitRun:
    """One run of either side."""

    debits: int
    latency: Latency
    drain_per_second: float
    """Median over bursts of 200 / the latency of the burst's last debit."""
    refused: int
    """Debits refused (insufficient funds) or not committed in time."""
    balance_error: int
    """How far the wallet's final balance is from its funds minus the debits that committed."""


async def measure_debits(h: Harness) -> Section:
    """The contended-debit benchmark (see the module docstring); one report section."""
    async with h.pool.acquire() as conn:
        merchant = f"bench-wallets-{uuid.uuid4().hex[:6]}"
        await create_merchant(conn, merchant, name=None, email=None, partner_ids=[], actor=ACTOR)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {BARE_TABLE}"
            " (id text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))"
        )
    debiters = await connect_pool(h.stack.database_url, size=CONNECTIONS)
    try:
        with progress(f"opening {CONNECTIONS} connections and warming up"):
            await _ledger_run(h, debiters, merchant, bursts=1, size=WARM_UP)
            await _bare_run(h, debiters, bursts=1, size=WARM_UP)
        pairs = await h.alternate(
            f"contended wallet debits, {DEBITS} at once",
            lambda: _bare_run(h, debiters, h.plan.debit_bursts, DEBITS),
            lambda: _ledger_run(h, debiters, merchant, h.plan.debit_bursts, DEBITS),
        )
    finally:
        await debiters.close()
    return _section(h, pairs)


async def _ledger_run(
    h: Harness, debiters: asyncpg.Pool, merchant: str, bursts: int, size: int
) -> DebitRun:
    funds = bursts * size * AMOUNT
    escrows = [[f"escrow:bench_{uuid.uuid4().hex}" for _ in range(size)] for _ in range(bursts)]
    async with h.pool.acquire() as conn:
        wallet = (await money.open_wallet(conn, merchant, CURRENCY, actor=ACTOR))["id"]
        await money.top_up(conn, wallet, funds, key=f"bench:{uuid.uuid4().hex}", actor=ACTOR)
        await conn.execute(
            "INSERT INTO ledger_accounts (id, kind, currency)"
            " SELECT unnest($1::text[]), 'escrow', $2",
            [account for burst in escrows for account in burst],
            CURRENCY,
        )

    async def debit(escrow: str) -> bool:
        async with debiters.acquire() as conn:
            try:
                await money.post(
                    conn,
                    {wallet: -AMOUNT, escrow: AMOUNT},
                    currency=CURRENCY,
                    kind="escrow_debit",
                    key=f"{escrow}:debit:{wallet}",
                    actor=ACTOR,
                )
            except InsufficientFunds:
                return False
        return True

    paced = await burst_loop(escrows, h.plan.debit_rate, debit, grace=GRACE)
    left: int = await h.pool.fetchval("SELECT balance FROM ledger_accounts WHERE id = $1", wallet)
    return _debit_run(paced, bursts, size, funds, left)


async def _bare_run(h: Harness, debiters: asyncpg.Pool, bursts: int, size: int) -> DebitRun:
    funds = bursts * size * AMOUNT
    wallet = f"bare_{uuid.uuid4().hex}"
    await h.pool.execute(f"INSERT INTO {BARE_TABLE} (id, balance) VALUES ($1, $2)", wallet, funds)

    async def debit(_: int) -> bool:
        async with debiters.acquire() as conn:
            done = await conn.execute(
                f"UPDATE {BARE_TABLE} SET balance = balance - $1 WHERE id = $2 AND balance >= $1",
                AMOUNT,
                wallet,
            )
        return bool(done == "UPDATE 1")

    paced = await burst_loop(
        [list(range(size)) for _ in range(bursts)], h.plan.debit_rate, debit, grace=GRACE
    )
    left: int = await h.pool.fetchval(f"SELECT balance FROM {BARE_TABLE} WHERE id = $1", wallet)
    return _debit_run(paced, bursts, size, funds, left)


def _debit_run(paced: Paced[bool], bursts: int, size: int, funds: int, left: int) -> DebitRun:
    outcomes = paced.outcomes
    drains = []
    for b in range(bursts):
        last = max(o.latency for o in outcomes[b * size : (b + 1) * size])
        drains.append(size / last if last > 0 else math.nan)
    committed = sum(1 for o in outcomes if o.finished and o.value)
    return DebitRun(
        debits=len(outcomes),
        latency=Latency.of([o.latency for o in outcomes]),
        drain_per_second=median(drains),
        refused=len(outcomes) - committed,
        balance_error=abs(funds - committed * AMOUNT - left),
    )


def _section(h: Harness, pairs: Pairs[DebitRun, DebitRun]) -> Section:
    plan = h.plan
    debits = plan.debit_bursts * DEBITS

    def both(figure: Callable[[DebitRun], float]) -> tuple[list[float], list[float]]:
        return [float(figure(r)) for r in pairs.subject], [float(figure(r)) for r in pairs.baseline]

    def cpu(process: str | None = None) -> tuple[list[float], list[float]]:
        return (
            [use.ms_per(process, debits) for use in pairs.subject_cpu],
            [use.ms_per(process, debits) for use in pairs.baseline_cpu],
        )

    rows = [
        Row(
            f"Drain throughput ({DEBITS} simultaneous debits / time to the last)",
            "debits/s",
            *both(lambda r: r.drain_per_second),
        ),
        Row("Debit latency p50 (due → commit)", "ms", *both(lambda r: r.latency.p50_ms)),
        Row(
            "Debit latency p99 (due → commit)",
            "ms",
            *both(lambda r: r.latency.p99_ms),
            Target("<=", P99_TARGET_RATIO, on_ratio=True),
        ),
        Row("Debit latency max", "ms", *both(lambda r: r.latency.max_ms)),
        Row(
            "Debits refused or not committed in time",
            "",
            *both(lambda r: r.refused),
            Target("<=", 0),
        ),
        Row(
            "Final balance off from funds minus committed debits",
            "",
            *both(lambda r: r.balance_error),
            Target("<=", 0),
        ),
        Row("CPU per debit, all stack processes", "ms", *cpu()),
        Row("CPU per debit, Postgres", "ms", *cpu("postgres")),
    ]
    notes = [
        f"{plan.repeats} runs (medians shown), each {plan.debit_bursts} bursts of {DEBITS} "
        f"debits of {AMOUNT} minor unit from one wallet, bursts due {1 / plan.debit_rate:g} s "
        f"apart (open loop); {debits:,} debits per run, the wallet funded for all of them. "
        "Latency runs from the burst's due time to each debit's commit, so the wait for a "
        "connection and for the row lock behind the other debits counts.",
        "Switchboard: `core.money.post` from the wallet to an escrow holding account of its own "
        "per debit (kind `escrow`), key `escrow:{id}:debit:{wallet}`, one transaction each: "
        "what the escrow saga's funding debit runs.",
        f"Baseline: one autocommitted `UPDATE {BARE_TABLE} SET balance = balance - $1 WHERE "
        "id = $2 AND balance >= $1` per debit on a bare table.",
        f"Both sides: {CONNECTIONS} asyncpg connections from the benchmark process (the embedded"
        " Postgres allows 100 in all), so the 200 debits of a burst queue for a connection on "
        "either side; CPU per debit includes the benchmark process.",
    ]
    return Section(
        title=f"Contended wallet debits — {DEBITS} concurrent debits of one wallet",
        baseline=f"a bare conditional `UPDATE … WHERE balance >= amount`, same bursts, "
        f"same {CONNECTIONS} connections, same Postgres",
        rows=rows,
        notes=notes,
    )
