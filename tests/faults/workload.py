"""Shared machinery of the fault tests: a seeded money workload and its exact expected ledger,
a sender that remembers every answer, the worker as a real child process, and the checks run
after a fault (everything acknowledged settles, exactly once, with gap-free merchant events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from core.settings import Settings
from devstack.ports import free_port
from devstack.processes import SwitchboardProcess, spawn_switchboard, standalone_settings
from tests.support import Partner, wait_for

log = logging.getLogger(__name__)

__all__ = [
    "FINAL",
    "PlannedPayment",
    "Sender",
    "Webhook",
    "WorkerProcess",
    "Workload",
    "assert_exactly_once",
    "assert_workflows_completed",
    "build_workload",
    "delivery_fault_point",
    "fault_point",
    "final_count",
    "in_background",
    "settle",
    "settle_deliveries",
]

REPO = Path(__file__).resolve().parents[2]
FINAL = ("processed", "ignored", "dead_lettered")


@dataclass(frozen=True)
class Webhook:
    """One signed-to-be webhook of the workload; its body never changes between resends."""

    webhook_id: str
    event_type: str
    merchant_id: str
    payment_id: str
    body: bytes
    refund_id: str | None = None


@dataclass(frozen=True)
class PlannedPayment:
    """A payment of the workload with the refunds that will be sent for it."""

    payment_id: str
    merchant_id: str
    amount: int
    refunds: tuple[tuple[str, int], ...]

    @property
    def refunded(self) -> int:
        return sum(amount for _, amount in self.refunds)

    @property
    def status(self) -> str:
        if not self.refunds:
            return "succeeded"
        return "refunded" if self.refunded == self.amount else "partially_refunded"


@dataclass
class Workload:
    """Payments and refunds (some sharing a payment, a few sent before it) in send chains."""

    seed: int
    payments: list[PlannedPayment]
    chains: list[list[Webhook]]

    @property
    def webhooks(self) -> list[Webhook]:
        return [hook for chain in self.chains for hook in chain]


def _body(event_type: str, **data: object) -> bytes:
    return json.dumps({"type": event_type, "data": data}, separators=(",", ":")).encode()


def build_workload(
    seed: int, *, payments: int, merchants: int, tag: str, refund_first: float = 0.15
) -> Workload:
    """A reproducible workload: ``payments`` payments over ``merchants`` merchants.

    Each payment gets 0-3 refunds whose sum never exceeds it (a third of the refunded ones are
    refunded in full), so every event must apply. A chain (one payment and its refunds) is sent
    in order, except that with probability ``refund_first`` its first refund goes before the
    payment and has to wait for it.
    """
    rng = random.Random(seed)
    merchant_ids = [f"m-{tag}-{i}" for i in range(merchants)]
    planned: list[PlannedPayment] = []
    chains: list[list[Webhook]] = []
    for n in range(payments):
        payment_id = f"pay_{tag}_{n}"
        merchant_id = rng.choice(merchant_ids)
        amount = rng.randint(1_000, 9_999)
        count = rng.choices((0, 1, 2, 3), weights=(3, 3, 2, 2))[0]
        amounts: list[int] = []
        if count and rng.random() < 1 / 3:
            cuts = sorted(rng.sample(range(1, amount), count - 1))
            amounts = [b - a for a, b in zip([0, *cuts], [*cuts, amount], strict=True)]
        else:
            amounts = [rng.randint(1, amount // (count + 1)) for _ in range(count)]
        refunds = tuple((f"re_{tag}_{n}_{i}", value) for i, value in enumerate(amounts))
        planned.append(PlannedPayment(payment_id, merchant_id, amount, refunds))
        payment = Webhook(
            webhook_id=f"msg_{tag}_pay_{n}",
            event_type="payment.succeeded",
            merchant_id=merchant_id,
            payment_id=payment_id,
            body=_body(
                "payment.succeeded",
                payment_id=payment_id,
                merchant_id=merchant_id,
                amount=amount,
                currency="EUR",
            ),
        )
        chain = [payment]
        for refund_id, value in refunds:
            chain.append(
                Webhook(
                    webhook_id=f"msg_{tag}_{refund_id}",
                    event_type="refund.succeeded",
                    merchant_id=merchant_id,
                    payment_id=payment_id,
                    refund_id=refund_id,
                    body=_body(
                        "refund.succeeded",
                        refund_id=refund_id,
                        payment_id=payment_id,
                        merchant_id=merchant_id,
                        amount=value,
                        currency="EUR",
                    ),
                )
            )
        if len(chain) > 1 and rng.random() < refund_first:
            chain[0], chain[1] = chain[1], chain[0]
        chains.append(chain)
    rng.shuffle(chains)
    return Workload(seed, planned, chains)


@dataclass
class Sender:
    """Posts workload webhooks as ``partner`` and remembers every answer."""

    partner: Partner
    acked: dict[str, str] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    async def post(self, hook: Webhook) -> httpx.Response:
        """Send ``hook`` once; a 2xx records its event id (which must never change)."""
        response = await self.partner.post(hook.body, webhook_id=hook.webhook_id)
        self.statuses[response.status_code] += 1
        if response.is_success:
            event_id = response.json()["event_id"]
            known = self.acked.setdefault(hook.webhook_id, event_id)
            if known != event_id:
                self.unexpected.append(f"{hook.webhook_id}: event id {known} then {event_id}")
        return response

    async def send_chains(
        self, chains: Iterable[list[Webhook]], *, concurrency: int, accept: tuple[int, ...]
    ) -> None:
        """Send each chain in order, ``concurrency`` chains at a time; note unexpected answers."""
        slots = asyncio.Semaphore(concurrency)

        async def send(chain: list[Webhook]) -> None:
            async with slots:
                for hook in chain:
                    response = await self.post(hook)
                    if response.status_code not in accept:
                        self.unexpected.append(
                            f"{hook.webhook_id}: {response.status_code} {response.text[:200]}"
                        )

        async with asyncio.TaskGroup() as group:
            for chain in chains:
                group.create_task(send(chain))


async def final_count(pool: asyncpg.Pool, partner_id: str) -> int:
    """How many of the partner's webhooks reached a final status."""
    count: int = await pool.fetchval(
        "SELECT count(*) FROM webhooks WHERE partner_id = $1 AND status = ANY($2::text[])",
        partner_id,
        list(FINAL),
    )
    return count


async def settle(pool: asyncpg.Pool, event_ids: Iterable[str], *, timeout: float) -> float:
    """Wait until every event is final (return the seconds it took) or fail naming stragglers."""
    wanted = sorted(set(event_ids))
    started = time.monotonic()

    async def probe() -> bool:
        done: int = await pool.fetchval(
            "SELECT count(*) FROM webhooks WHERE event_id = ANY($1::text[])"
            " AND status = ANY($2::text[])",
            wanted,
            list(FINAL),
        )
        return done == len(wanted)

    try:
        await wait_for(probe, timeout=timeout, interval=0.1, what=f"{len(wanted)} events to settle")
    except AssertionError as error:
        rows = await pool.fetch(
            "SELECT event_id, webhook_id, status, event_type, relay_lease_until, detail"
            " FROM webhooks WHERE event_id = ANY($1::text[]) AND NOT (status = ANY($2::text[]))"
            " ORDER BY id LIMIT 10",
            wanted,
            list(FINAL),
        )
        raise AssertionError(f"{error}; first stragglers: {[dict(r) for r in rows]}") from None
    return time.monotonic() - started


async def assert_exactly_once(
    pool: asyncpg.Pool, partner_id: str, workloads: Iterable[Workload], acked: dict[str, str]
) -> None:
    """Every planned webhook was acknowledged and applied once; the ledger is exactly the plan.

    Checks one inbox row per webhook id (all ``processed``), payments and refunds equal to the
    plan, ``refunded_amount`` equal to the sum of the payment's refund rows, one refund audit
    entry per refund, no dead letters, and per merchant ``events.seq`` exactly ``1..N`` where
    ``N`` is the number of events applied for that merchant (also ``merchants.last_seq``).
    """
    plans = list(workloads)
    hooks = [hook for plan in plans for hook in plan.webhooks]
    assert sorted(acked) == sorted(hook.webhook_id for hook in hooks), "not everything was acked"

    rows = await pool.fetch(
        "SELECT webhook_id, event_id, status FROM webhooks WHERE partner_id = $1", partner_id
    )
    per_id = Counter(row["webhook_id"] for row in rows)
    assert {k: v for k, v in per_id.items() if v != 1} == {}, "webhook ids with several rows"
    assert sorted(per_id) == sorted(acked), "inbox rows differ from the acknowledged webhooks"
    wrong = {
        row["webhook_id"]: (row["event_id"], row["status"])
        for row in rows
        if row["event_id"] != acked[row["webhook_id"]] or row["status"] != "processed"
    }
    assert wrong == {}, "inbox rows with another event id or a status other than processed"

    payments = {
        row["payment_id"]: dict(row)
        for row in await pool.fetch(
            "SELECT payment_id, merchant_id, amount, refunded_amount, status FROM payments"
            " WHERE partner_id = $1",
            partner_id,
        )
    }
    expected_payments = {
        p.payment_id: {
            "payment_id": p.payment_id,
            "merchant_id": p.merchant_id,
            "amount": p.amount,
            "refunded_amount": p.refunded,
            "status": p.status,
        }
        for plan in plans
        for p in plan.payments
    }
    assert payments == expected_payments, "payments differ from the plan"

    refund_hooks = {hook.refund_id: hook for hook in hooks if hook.refund_id is not None}
    refunds = {
        row["refund_id"]: (row["payment_id"], row["amount"], row["event_id"])
        for row in await pool.fetch(
            "SELECT refund_id, payment_id, amount, event_id FROM refunds WHERE partner_id = $1",
            partner_id,
        )
    }
    expected_refunds = {
        refund_id: (p.payment_id, amount, acked[refund_hooks[refund_id].webhook_id])
        for plan in plans
        for p in plan.payments
        for refund_id, amount in p.refunds
    }
    assert refunds == expected_refunds, "refunds differ from the plan"
    double_refunded = await pool.fetch(
        "SELECT p.payment_id, p.refunded_amount, coalesce(sum(r.amount), 0) AS refunds"
        " FROM payments p LEFT JOIN refunds r USING (partner_id, payment_id)"
        " WHERE p.partner_id = $1 GROUP BY p.payment_id, p.refunded_amount"
        " HAVING p.refunded_amount <> coalesce(sum(r.amount), 0)",
        partner_id,
    )
    assert [dict(r) for r in double_refunded] == [], "refunded_amount ≠ sum of its refunds"
    audits = await pool.fetch(
        "SELECT entity_id, count(*) AS n FROM audit_log WHERE entity_type = 'refund'"
        " AND entity_id LIKE $1 GROUP BY entity_id",
        f"{partner_id}:%",
    )
    assert {r["entity_id"]: r["n"] for r in audits} == {
        f"{partner_id}:{refund_id}": 1 for refund_id in expected_refunds
    }, "refund audit entries are not exactly one per refund"
    parked = await pool.fetchval("SELECT count(*) FROM dead_letters")
    assert parked == 0, "some webhooks were dead-lettered"

    expected_events: defaultdict[str, int] = defaultdict(int)
    for hook in hooks:
        expected_events[hook.merchant_id] += 1
    merchants = sorted(expected_events)
    sequences = {
        row["merchant_id"]: list(row["seqs"])
        for row in await pool.fetch(
            "SELECT merchant_id, array_agg(seq ORDER BY seq) AS seqs FROM events"
            " WHERE merchant_id = ANY($1::text[]) GROUP BY merchant_id",
            merchants,
        )
    }
    assert sequences == {m: list(range(1, expected_events[m] + 1)) for m in merchants}, (
        "merchant event sequences are not exactly 1..N"
    )
    last_seq = {
        row["id"]: row["last_seq"]
        for row in await pool.fetch(
            "SELECT id, last_seq FROM merchants WHERE id = ANY($1::text[])", merchants
        )
    }
    assert last_seq == dict(expected_events), "merchants.last_seq differs from the event count"
    event_ids = await pool.fetch(
        "SELECT event_id FROM events WHERE merchant_id = ANY($1::text[])", merchants
    )
    assert sorted(r["event_id"] for r in event_ids) == sorted(acked.values()), (
        "merchant events are not exactly one per applied webhook"
    )


async def assert_workflows_completed(
    client: Client, task_queue: str, expected: int, *, timeout: float = 60.0
) -> None:
    """Exactly ``expected`` workflows completed on ``task_queue`` and none failed or is open.

    Visibility is eventually consistent, so this waits for the completed count first.
    """
    completed_query = f'TaskQueue="{task_queue}" AND ExecutionStatus="Completed"'

    async def completed() -> int | None:
        count = (await client.count_workflows(completed_query)).count
        return count if count >= expected else None

    try:
        count = await wait_for(completed, timeout=timeout, interval=0.25, what="visibility")
    except AssertionError as error:
        count = (await client.count_workflows(completed_query)).count
        open_ones = [
            (execution.id, execution.status)
            async for execution in client.list_workflows(
                f'TaskQueue="{task_queue}" AND ExecutionStatus!="Completed"'
            )
        ]
        raise AssertionError(
            f"{error}: {count} of {expected} completed; not completed: {open_ones[:5]}"
        ) from None
    assert count == expected, f"{count} workflows completed, expected {expected}"
    failed = [
        execution.id
        async for execution in client.list_workflows(
            f'TaskQueue="{task_queue}" AND ExecutionStatus="Failed"'
        )
    ]
    assert failed == [], f"{len(failed)} workflows failed: {failed[:5]}"
    others = [
        (execution.id, execution.status)
        async for execution in client.list_workflows(
            f'TaskQueue="{task_queue}" AND ExecutionStatus!="Completed"'
        )
    ]
    assert others == [], f"workflows not completed: {others[:5]}"
    await _assert_deterministic(client, task_queue, expected)


NONDETERMINISM = ("TMPRL1100", "TMPRL1101")
"""The SDK's nondeterminism error codes, as they appear in a failed workflow task's message."""


async def _assert_deterministic(client: Client, task_queue: str, expected: int) -> None:
    """RELIABILITY D8: no workflow task of the queue's workflows failed as nondeterministic
    (whatever the faults did to their workers); other workflow-task failures are logged."""
    fetches = asyncio.Semaphore(16)

    async def failed_tasks(workflow_id: str, run_id: str | None) -> list[str]:
        async with fetches:
            history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        return [
            event.workflow_task_failed_event_attributes.failure.message
            for event in history.events
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        ]

    runs = [(e.id, e.run_id) async for e in client.list_workflows(f'TaskQueue="{task_queue}"')]
    assert len(runs) == expected, f"{len(runs)} workflows listed, expected {expected}"
    failures = [m for ms in await asyncio.gather(*(failed_tasks(*r) for r in runs)) for m in ms]
    nondeterministic = [m for m in failures if any(code in m for code in NONDETERMINISM)]
    log.info(
        "D8: %d histories read, %d workflow tasks failed, %d of them nondeterministic",
        len(runs),
        len(failures),
        len(nondeterministic),
    )
    assert nondeterministic == [], nondeterministic[:3]


class WorkerProcess:
    """The worker as a real child process that a test can SIGKILL and start again.

    The child gets the stores, the task queue and the relay sweep of ``settings``, plus the
    ``forward`` settings (field names of :class:`Settings`); every other setting keeps its
    default.
    """

    def __init__(self, settings: Settings, log_dir: Path, *, forward: Iterable[str] = ()) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.forward = tuple(forward)
        self.starts = 0
        self.kills = 0
        self._proc: SwitchboardProcess | None = None
        self._log: Path | None = None

    def _settings(self) -> Settings:
        return standalone_settings(
            environment="test",
            database_url=self.settings.database_url,
            redis_url=self.settings.redis_url,
            temporal_address=self.settings.temporal_address,
            task_queue=self.settings.task_queue,
            relay_sweep_seconds=self.settings.relay_sweep_seconds,
            worker_metrics_port=free_port(),
            worker_sdk_metrics_port=free_port(),
            **{name: getattr(self.settings, name) for name in self.forward},
        )

    @property
    def log(self) -> Path:
        assert self._log is not None
        return self._log

    def start(self) -> None:
        """Start a new worker process (its log goes to ``worker-<n>.log`` in ``log_dir``)."""
        assert self._proc is None, "the worker is already running"
        self.starts += 1
        self._log = self.log_dir / f"worker-{self.starts}.log"
        self._proc = spawn_switchboard("worker", self._settings(), self._log, cwd=REPO)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the worker logged that it polls its task queue."""
        assert self._proc is not None
        await self._proc.wait_ready_async(timeout)

    def freeze(self) -> None:
        """SIGSTOP the worker: it runs nothing more, and whatever it already sent (a COMMIT, a
        request) completes without it ever reading the answer. :meth:`kill` still ends it."""
        assert self._proc is not None and self._proc.running, "the worker is not running"
        self._proc.send_signal(signal.SIGSTOP)

    async def kill(self) -> None:
        """SIGKILL the worker (no graceful shutdown at all) and reap it."""
        proc = self._proc
        assert proc is not None and proc.running, "the worker is not running"
        self._proc = None
        code = await asyncio.to_thread(proc.kill)
        assert code == -signal.SIGKILL, code
        self.kills += 1

    async def stop(self) -> None:
        """Stop the worker if it runs: SIGTERM, then SIGKILL if it takes over 20 s."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await asyncio.to_thread(proc.stop, 20)


@contextlib.asynccontextmanager
async def in_background(work: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``work`` as a task for the block; cancel it on the way out if it is still running."""
    task = asyncio.create_task(work)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def settle_deliveries(pool: asyncpg.Pool, *, expected: int, timeout: float) -> float:
    """Wait until the database holds ``expected`` deliveries, all ``succeeded`` (return the
    seconds it took), or fail naming the count per status and the first stragglers.
    """
    started = time.monotonic()

    async def probe() -> bool:
        row = await pool.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE status = 'succeeded') AS done"
            " FROM deliveries"
        )
        assert row is not None
        return bool(row["total"] == row["done"] == expected)

    try:
        await wait_for(probe, timeout=timeout, interval=0.1, what=f"{expected} deliveries")
    except AssertionError as error:
        counts = await pool.fetch("SELECT status, count(*) FROM deliveries GROUP BY status")
        rows = await pool.fetch(
            "SELECT id, event_id, endpoint_id, status, attempts, cycle, dispatched_cycle,"
            " last_error FROM deliveries WHERE status <> 'succeeded' ORDER BY seq LIMIT 10"
        )
        raise AssertionError(
            f"{error}; by status {dict(map(tuple, counts))}; first stragglers:"
            f" {[dict(r) for r in rows]}"
        ) from None
    return time.monotonic() - started


def delivery_fault_point(
    pool: asyncpg.Pool, *, at_least: int, total: int, sending: Callable[[], int]
) -> Callable[[], Awaitable[int | None]]:
    """A ``wait_for`` probe for "some but not all deliveries succeeded, and some on the wire".

    Returns the number of succeeded deliveries once it is ``>= at_least`` while ``sending()``
    (requests the receiver is answering right now) is positive; fails if all ``total``
    succeeded first.
    """

    async def check() -> int | None:
        done: int = await pool.fetchval(
            "SELECT count(*) FROM deliveries WHERE status = 'succeeded'"
        )
        if done >= total:
            raise AssertionError(f"all {total} deliveries succeeded before the fault point")
        return done if done >= at_least and sending() > 0 else None

    return check


def fault_point(
    pool: asyncpg.Pool, partner_id: str, *, at_least: int, total: int
) -> Callable[[], Awaitable[int | None]]:
    """A ``wait_for`` probe for "some but not all processed, and work in flight".

    Returns the number of settled webhooks once it is ``>= at_least`` while some workflow is
    running or some row is claimed by a relay; fails if all ``total`` settled first (the fault
    would then hit an idle system).
    """

    async def check() -> int | None:
        row = await pool.fetchrow(
            "SELECT count(*) FILTER (WHERE status = ANY($2::text[])) AS settled,"
            " count(*) FILTER (WHERE status = 'started' OR (status = 'received'"
            " AND relay_lease_until > clock_timestamp())) AS in_flight"
            " FROM webhooks WHERE partner_id = $1",
            partner_id,
            list(FINAL),
        )
        assert row is not None
        if row["settled"] >= total:
            raise AssertionError(f"all {total} webhooks settled before the fault point")
        return row["settled"] if row["settled"] >= at_least and row["in_flight"] else None

    return check
