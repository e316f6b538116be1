"""P4 (RELIABILITY.md §4): the escrow saga crash matrix. The worker is SIGKILLed with escrows
stopped at every step boundary, before and after each step's commit, for three seeds; a fresh
worker finishes them, and every escrow must end ``released``, ``refunded`` or ``failed`` (every
debit returned), never in between, each effect applied once per key, the provider paid at most
once per escrow.

**The boundaries** (:data:`BOUNDARIES`): the ``funding`` transition, a source's debit, the
``funded`` transition; with a source that can never pay (seeded), a good source's debit, the
return of a debit (compensation) and the ``failed`` transition; then the ``releasing``
transition, the payout transfer, the release settlement (``released``), the ``refunding``
transition and the refund settlement (``refunded``). Each is crashed ``before`` and ``after``
its commit, each pair on an escrow of its own: 22 escrows per seed. A seed draws the sources
(one to three, their amounts), which source fails and which the crash names, the beneficiary (a
wallet or an external account at the payout sink) and, where the boundary leaves it open,
release or refund.

**How the worker is stopped exactly there, without a hook in production code.** The test puts
its own deferred constraint trigger on ``ledger_transactions`` and ``escrows`` (this database
only): it fires at COMMIT, after all of a step's writes, and when the row matches an armed crash
point (``crash_points``, by ledger key or by escrow merchant and new status) it takes an advisory
lock the test holds, so the step's transaction waits, uncommitted, inside COMMIT. The test sees
that wait in ``pg_locks`` (which point, which backend), so it kills only once every escrow of
the seed is parked at its point. The kill itself:

1. SIGSTOP the worker, so nothing it does from here on reaches anyone;
2. ``before``: terminate the parked backends (what Postgres does on finding its client gone):
   those transactions roll back;
3. ``after``: release their locks: those transactions commit, and the test reads each effect
   from another session, while the frozen worker never reads the COMMIT's answer;
4. SIGKILL the worker, then start a fresh one.

Temporal learns of the loss only by timeouts, as after a real crash: a Postgres step runs as a
local activity inside a workflow task, which times out (then the fresh worker replays the
workflow and runs the step again); the transfer is a regular activity, retried after its 60 s
start-to-close timeout.

The payout transfer has no commit of ours; the worker reaches the payout sink through a door of
the test's (:class:`ProviderDoor`, a small HTTP proxy) that stops one transfer by its idempotency
key: ``before`` the provider commits, it holds the request without passing it on; ``after``, it
passes it on (the sink commits and answers) and holds the answer. Either way it lets go only when
the worker's connection drops, so the provider never commits the first, and the second is a
committed transfer whose answer died with the worker. (The sink's own ``time_out_after_commit``
is armed for the next new transfer whoever sends it; earlier seeds' escrows pay while the next
seed parks, so only a stop by key is deterministic here.)

Seeds run one after another, each with a worker incarnation of its own killed once; the escrows
of earlier seeds recover meanwhile (a later kill may catch them again: more faults, same
checks). Each case records what the kill left: its step's effect committed (``after``) or not
(``before``), read from Postgres or the sink while the worker was frozen. Afterwards, besides the
outcome checks, each escrow's history must show Temporal ran that kind of step again after
noticing the loss (:func:`_rerun_after_the_kill`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import asyncpg
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import Client, WorkflowExecutionStatus

from core.contracts import PAYOUT_TRANSFER_ACTIVITY, EscrowStatus, escrow_workflow_id
from core.escrow import debit_key, release_key, return_key
from core.money import world_account
from core.settings import Settings
from devstack.payout_sink import PayoutSink
from tests.escrow.support import assert_conserved, assert_history, escrow_body, keyed, wallets
from tests.faults.workload import WorkerProcess
from tests.money_support import assert_books_balance
from tests.support import fresh_database, running_api, serving, stores, wait_for

SEEDS = (4_0901, 4_0902, 4_0903)
CURRENCY = "EUR"
# What the child worker takes from the test's settings besides stores and task queue: its own
# queues, the session's sinks, and connections enough for every step parked at once.
FORWARD = (
    "delivery_task_queue",
    "oncall_task_queue",
    "exchange_task_queue",
    "monitor_schedule",
    "slack_base_url",
    "pagerduty_base_url",
    "payout_base_url",
    "payout_timeout_seconds",
    "database_pool_size",
)
COMPENSATION_ALERT_SECONDS = 5.0
"""Below the 30 s a killed return waits for its timeout: a crashed compensation must alert."""
LOCAL_ACTIVITY_MARKER = "core_local_activity"
"""The marker a local activity's outcome is recorded as (Temporal's core SDK)."""
FINAL = {EscrowStatus.RELEASED, EscrowStatus.REFUNDED, EscrowStatus.FAILED}
log = logging.getLogger(__name__)

Moment = Literal["before", "after"]
Ending = Literal["release", "refund", "fail"]
MOMENTS: tuple[Moment, ...] = ("before", "after")
ENDINGS: tuple[Ending, ...] = ("release", "refund")
T = TypeVar("T")


@dataclass(frozen=True)
class Boundary:
    """A step of the saga the worker is killed at: the activity it runs, the status it writes
    (for transitions and settlements), its phase, and the ending it implies (if any)."""

    name: str
    activity: str
    status: EscrowStatus | None
    phase: Literal["funding", "failing", "settling"]
    ending: Ending | None = None


BOUNDARIES = (
    Boundary("funding", "move_escrow", EscrowStatus.FUNDING, "funding"),
    Boundary("debit", "debit_escrow_source", None, "funding"),
    Boundary("funded", "move_escrow", EscrowStatus.FUNDED, "funding"),
    Boundary("debit beside a refusal", "debit_escrow_source", None, "failing", "fail"),
    Boundary("return", "return_escrow_source", None, "failing", "fail"),
    Boundary("failed", "move_escrow", EscrowStatus.FAILED, "failing", "fail"),
    Boundary("releasing", "move_escrow", EscrowStatus.RELEASING, "settling", "release"),
    Boundary("payout", PAYOUT_TRANSFER_ACTIVITY, None, "settling", "release"),
    Boundary("released", "release_escrow", EscrowStatus.RELEASED, "settling", "release"),
    Boundary("refunding", "move_escrow", EscrowStatus.REFUNDING, "settling", "refund"),
    Boundary("refunded", "refund_escrow", EscrowStatus.REFUNDED, "settling", "refund"),
)


@dataclass(frozen=True)
class Case:
    """One escrow of the matrix: where it is crashed, and what the seed drew for it."""

    seed: int
    number: int
    boundary: Boundary
    moment: Moment
    amounts: tuple[int, ...]
    balances: tuple[int, ...]
    """What each source wallet holds before the escrow (the failing one less than its amount)."""
    failing: int | None
    target: int
    """The source the boundary names (a debit or a return)."""
    ending: Ending
    to_account: bool

    @property
    def label(self) -> str:
        return f"seed {self.seed} #{self.number} {self.boundary.name}/{self.moment}"

    @property
    def final(self) -> EscrowStatus:
        return {
            "release": EscrowStatus.RELEASED,
            "refund": EscrowStatus.REFUNDED,
            "fail": EscrowStatus.FAILED,
        }[self.ending]


def plan(seed: int) -> list[Case]:
    """The seed's 22 escrows: every boundary, before and after its commit."""
    rng = random.Random(seed)
    cases: list[Case] = []
    for boundary in BOUNDARIES:
        for moment in MOMENTS:
            failing_path = boundary.phase == "failing"
            count = rng.randint(2, 3) if failing_path else rng.randint(1, 3)
            amounts = tuple(rng.randint(2, 60) for _ in range(count))
            failing = rng.randrange(count) if failing_path else None
            target = rng.choice([i for i in range(count) if i != failing])
            balances = tuple(
                amount - rng.randint(1, amount) if i == failing else amount + rng.randint(0, 9)
                for i, amount in enumerate(amounts)
            )
            ending = rng.choice(ENDINGS) if boundary.ending is None else boundary.ending
            if boundary.name == "payout":
                to_account = True
            else:
                to_account = ending == "release" and rng.random() < 0.5
            cases.append(
                Case(
                    seed,
                    len(cases),
                    boundary,
                    moment,
                    amounts,
                    balances,
                    failing,
                    target,
                    ending,
                    to_account,
                )
            )
    return cases


@dataclass
class Escrow:
    """A case made real: its merchant, wallets, escrow and crash point."""

    case: Case
    merchant: str
    sources: list[str]
    beneficiary: str | None
    account: str | None
    id: str = ""
    lock_key: int | None = None
    effect_seen_before_kill: bool | None = None
    killed_at: float = 0.0


# -- crash points in Postgres -------------------------------------------------------------------

CRASH_POINT_SQL = [
    "CREATE TABLE crash_points (pattern text PRIMARY KEY, lock_key bigint NOT NULL UNIQUE)",
    """
    CREATE FUNCTION crash_point() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        tag text;
        held bigint;
    BEGIN
        IF TG_TABLE_NAME = 'ledger_transactions' THEN
            tag := 'ledger:' || NEW.idempotency_key;
        ELSE
            tag := 'escrow:' || NEW.merchant_id || ':' || NEW.status;
        END IF;
        SELECT lock_key INTO held FROM crash_points WHERE tag LIKE pattern LIMIT 1;
        IF held IS NOT NULL THEN
            PERFORM pg_advisory_xact_lock(held);
        END IF;
        RETURN NULL;
    END $$
    """,
    "CREATE CONSTRAINT TRIGGER crash_point AFTER INSERT ON ledger_transactions"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION crash_point()",
    "CREATE CONSTRAINT TRIGGER crash_point AFTER UPDATE OF status ON escrows"
    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
    " WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION crash_point()",
]
_ANY = "\x00"


def _like(text: str) -> str:
    """``text`` as a LIKE pattern matching itself, with :data:`_ANY` matching anything."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace(_ANY, "%")


class CrashPoints:
    """The test's side of the crash points: arms them (holding each one's advisory lock), sees
    who waits at one, lets it through, or ends it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._using = asyncio.Lock()  # one connection: one statement at a time
        self._next_key = 0

    @classmethod
    async def install(cls, database_url: str) -> CrashPoints:
        conn = await asyncpg.connect(database_url)
        for statement in CRASH_POINT_SQL:
            await conn.execute(statement)
        return cls(conn)

    async def close(self) -> None:
        await self._conn.close()

    async def arm(self, pattern: str) -> int:
        """Stop, inside its COMMIT, the transaction writing a row whose tag matches."""
        async with self._using:
            self._next_key += 1
            key = self._next_key
            await self._conn.execute("SELECT pg_advisory_lock($1)", key)
            await self._conn.execute("INSERT INTO crash_points VALUES ($1, $2)", pattern, key)
        return key

    async def let_through(self, keys: Iterable[int]) -> None:
        """Disarm these points and let whoever waits at them commit."""
        keys = list(keys)
        async with self._using:
            await self._conn.execute("DELETE FROM crash_points WHERE lock_key = ANY($1)", keys)
            for key in keys:
                await self._conn.execute("SELECT pg_advisory_unlock($1)", key)

    async def parked(self) -> dict[int, int]:
        """The backends waiting at an armed point: ``{lock_key: pid}``."""
        async with self._using:
            rows = await self._conn.fetch(
                "SELECT objid::bigint AS key, pid FROM pg_locks"
                " WHERE locktype = 'advisory' AND NOT granted AND classid = 0"
            )
        return {row["key"]: row["pid"] for row in rows}

    async def terminate(self, pids: list[int]) -> None:
        """End these backends as Postgres does on finding their client gone: roll back."""
        async with self._using:
            await self._conn.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids
            )

        async def gone() -> bool:
            async with self._using:
                alive = await self._conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
                )
            return bool(alive == 0)

        await wait_for(gone, timeout=10, what=f"backends {pids} to end")


class ProviderDoor:
    """The worker's way to the payout provider (an HTTP proxy in front of the sink) that stops
    one transfer, by its idempotency key, before it reaches the provider or after the provider
    answered, until the caller's connection drops."""

    def __init__(self, provider: str, http: httpx.AsyncClient) -> None:
        self._provider = provider.rstrip("/")
        self._http = http
        self._stops: dict[str, Moment] = {}
        self.stopped: dict[str, Moment] = {}
        """The transfers held right now, by key."""
        self.app = Starlette(routes=[Route("/{path:path}", self._pass, methods=["GET", "POST"])])

    def stop(self, key: str, moment: Moment) -> None:
        """Stop the next transfer whose idempotency key starts with ``key``."""
        self._stops[key] = moment

    async def _pass(self, request: Request) -> Response:
        sent = request.headers.get("idempotency-key", "")
        key = next((key for key in self._stops if sent.startswith(key)), "")
        moment = self._stops.pop(key, None)
        body = await request.body()
        if moment == "before":
            await self._hold(request, key, moment)
            return Response(status_code=503)  # nobody reads it: the caller is gone
        forwarded = {
            name: value
            for name, value in request.headers.items()
            if name in ("authorization", "content-type", "idempotency-key")
        }
        answer = await self._http.request(
            request.method,
            f"{self._provider}{request.url.path}",
            params=request.query_params,
            content=body,
            headers=forwarded,
        )
        if moment == "after":
            await self._hold(request, key, moment)
        passed = {
            name: value
            for name, value in answer.headers.items()
            if name in ("content-type", "idempotent-replayed")
        }
        return Response(answer.content, answer.status_code, passed)

    async def _hold(self, request: Request, key: str, moment: Moment) -> None:
        self.stopped[key] = moment
        try:
            while not await request.is_disconnected():
                await asyncio.sleep(0.05)
        finally:
            del self.stopped[key]


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """What every seed of the run shares."""

    http: httpx.AsyncClient
    pool: asyncpg.Pool
    crash: CrashPoints
    door: ProviderDoor
    sink: PayoutSink
    worker: WorkerProcess
    marks: dict[str, float] = field(default_factory=dict)
    began: float = field(default_factory=time.monotonic)
    refused_own_retry: list[str] = field(default_factory=list)
    """Orders answered 503, then 409 on their retry although the workflow had taken them."""

    def mark(self, what: str) -> None:
        self.marks[what] = round(time.monotonic() - self.began, 1)


async def test_every_escrow_ends_whole_whatever_boundary_the_worker_dies_at(
    postgres_admin_url: str,
    settings: Settings,
    temporal_client: Client,
    payout_sink: PayoutSink,
    tmp_path: Path,
) -> None:
    """11 boundaries, before and after, 3 seeds, one SIGKILL per seed: every escrow ends whole."""
    async with httpx.AsyncClient(timeout=30) as provider_http:
        door = ProviderDoor(payout_sink.url, provider_http)
        async with serving(door.app, what="the provider door") as door_url:
            settings = settings.model_copy(
                update={
                    "database_url": await fresh_database(postgres_admin_url),
                    "task_queue": f"tq-p4-{uuid.uuid4().hex[:8]}",
                    "delivery_task_queue": f"dq-p4-{uuid.uuid4().hex[:8]}",
                    "oncall_task_queue": f"oq-p4-{uuid.uuid4().hex[:8]}",
                    "exchange_task_queue": f"xq-p4-{uuid.uuid4().hex[:8]}",
                    "escrow_wait_seconds": 0.3,
                    "escrow_compensation_alert_seconds": COMPENSATION_ALERT_SECONDS,
                    "payout_base_url": door_url,
                    # A held transfer must wait for the kill, not time out on its own first.
                    "payout_timeout_seconds": 50.0,
                    "database_pool_size": 40,
                }
            )
            await run_the_matrix(settings, temporal_client, door, payout_sink, tmp_path)


async def run_the_matrix(
    settings: Settings, client: Client, door: ProviderDoor, sink: PayoutSink, tmp_path: Path
) -> None:
    crash = await CrashPoints.install(settings.database_url)
    worker = WorkerProcess(settings, tmp_path, forward=FORWARD)
    escrows: list[Escrow] = []
    async with (
        running_api(settings) as api_url,
        httpx.AsyncClient(base_url=api_url, timeout=30) as http,
        stores(settings) as (pool, _),
    ):
        run = Run(http, pool, crash, door, sink, worker)
        worker.start()
        try:
            await worker.wait_ready()
            for seed in SEEDS:
                escrows += await crash_one_seed(run, seed)
            await end_the_open_ones(run, escrows)
            await wait_all_final(run, escrows, timeout=180)
            run.mark("all final")
        finally:
            await worker.stop()
            await crash.close()
        log.info(
            "P4 seeds %s, %d escrows, timeline %s; 503 then 409 for the client's own order: %s",
            SEEDS,
            len(escrows),
            run.marks,
            run.refused_own_retry,
        )
        assert worker.kills == len(SEEDS)

        rows = await pool.fetch("SELECT status, count(*) AS n FROM escrows GROUP BY status")
        statuses = {row["status"]: row["n"] for row in rows}
        assert set(statuses) <= FINAL, f"escrows left in between: {statuses}"
        assert sum(statuses.values()) == len(escrows)
        await assert_books_balance(pool)
        await assert_conserved(pool)
        orphans = await pool.fetchval(
            "SELECT count(*) FROM ledger_transactions t"
            " WHERE NOT EXISTS (SELECT 1 FROM postings p WHERE p.transaction_id = t.id)"
        )
        assert orphans == 0
        broken = []
        for escrow in escrows:
            try:
                await assert_escrow_whole(run, client, escrow)
            except AssertionError as error:
                broken.append(f"{escrow.case.label}: {error}")
        assert not broken, "\n".join(broken)


async def crash_one_seed(run: Run, seed: int) -> list[Escrow]:
    """Create the seed's escrows, park each at its boundary, kill the worker, start another."""
    escrows = await _limited(6, [prepare(run, case) for case in plan(seed)])
    await _limited(8, [create(run, escrow) for escrow in escrows])
    run.mark(f"{seed} created")
    settling = [e for e in escrows if e.case.boundary.phase == "settling"]
    in_db = [e for e in escrows if e.lock_key is not None]
    at_door = [e for e in settling if e.lock_key is None]

    async def parked(escrows: list[Escrow]) -> bool:
        waiting = await run.crash.parked()
        return all(e.lock_key in waiting for e in escrows)

    async def funding_parked_and_the_rest_funded() -> bool:
        statuses = await _statuses(run.pool, settling)
        funding = [e for e in in_db if e.case.boundary.phase != "settling"]
        return await parked(funding) and set(statuses.values()) == {EscrowStatus.FUNDED}

    await wait_for(funding_parked_and_the_rest_funded, timeout=60, what=f"{seed}: funding")
    for escrow in at_door:
        run.door.stop(release_key(escrow.id), escrow.case.moment)
    await asyncio.gather(*(settle(run, e) for e in settling))

    async def all_parked() -> bool:
        held = {release_key(e.id) for e in at_door}
        return await parked(in_db) and set(run.door.stopped) >= held

    try:
        await wait_for(all_parked, timeout=60, what=f"{seed}: every escrow at its boundary")
    except AssertionError as error:
        waiting, statuses = await run.crash.parked(), await _statuses(run.pool, escrows)
        missing = [
            f"{e.case.label} ({statuses[e.id]})"
            for e in escrows
            if (e.lock_key is not None and e.lock_key not in waiting)
            or (e.lock_key is None and release_key(e.id) not in run.door.stopped)
        ]
        raise AssertionError(f"{error}; not there: {missing}") from None
    run.mark(f"{seed} parked")
    await kill_at_the_boundaries(run, escrows)
    run.mark(f"{seed} killed")
    run.worker.start()
    await run.worker.wait_ready()
    run.mark(f"{seed} restarted")
    return escrows


async def kill_at_the_boundaries(run: Run, escrows: list[Escrow]) -> None:
    """Freeze the worker, roll back the ``before`` steps, commit the ``after`` ones, SIGKILL."""
    waiting = await run.crash.parked()
    before = [e for e in escrows if e.lock_key is not None and e.case.moment == "before"]
    after = [e for e in escrows if e.lock_key is not None and e.case.moment == "after"]
    run.worker.freeze()
    await run.crash.terminate([waiting[e.lock_key] for e in before if e.lock_key is not None])
    await run.crash.let_through(e.lock_key for e in after if e.lock_key is not None)

    async def committed() -> bool:
        return all([await _effect_visible(run, e) for e in after])

    await wait_for(committed, timeout=20, what="the after-commit steps to commit")
    for escrow in escrows:
        escrow.effect_seen_before_kill = await _effect_visible(run, escrow)
    await run.worker.kill()
    killed_at = time.time()
    for escrow in escrows:
        escrow.killed_at = killed_at
    await run.crash.let_through(e.lock_key for e in before if e.lock_key is not None)


async def prepare(run: Run, case: Case) -> Escrow:
    """A merchant with the case's wallets (and beneficiary), its crash point armed."""
    beneficiary = [] if case.to_account else [0]
    merchant, opened = await wallets(run.http, run.pool, [*case.balances, *beneficiary])
    sources = opened[: len(case.amounts)]
    escrow = Escrow(
        case,
        merchant,
        sources,
        beneficiary=None if case.to_account else opened[-1],
        account=f"acct_p4_{case.seed}_{case.number}" if case.to_account else None,
    )
    pattern = _crash_pattern(escrow)
    if pattern is not None:
        escrow.lock_key = await run.crash.arm(pattern)
    return escrow


def _crash_pattern(escrow: Escrow) -> str | None:
    """Which row's commit the case stops at (None for the payout: no commit of ours)."""
    boundary = escrow.case.boundary
    target = escrow.sources[escrow.case.target]
    if boundary.activity == "debit_escrow_source":
        return _like(f"ledger:{debit_key(_ANY, target)}")
    if boundary.activity == "return_escrow_source":
        return _like(f"ledger:{return_key(_ANY, target)}")
    if boundary.status is not None:
        return _like(f"escrow:{escrow.merchant}:{boundary.status}")
    return None


async def create(run: Run, escrow: Escrow) -> None:
    case = escrow.case
    body = escrow_body(
        escrow.merchant,
        list(zip(escrow.sources, case.amounts, strict=True)),
        wallet=escrow.beneficiary,
        account=escrow.account,
        reference=f"p4-{case.seed}-{case.number}",
    )
    created = await run.http.post("/v1/escrows", json=body, headers=keyed())
    assert created.status_code in (201, 202), created.text
    escrow.id = created.json()["id"]


_TAKEN = {
    "release": {EscrowStatus.RELEASING, EscrowStatus.RELEASED, EscrowStatus.RELEASE_FAILED},
    "refund": {EscrowStatus.REFUNDING, EscrowStatus.REFUNDED},
}
"""Where an escrow is once a release (refund) was taken."""


async def settle(run: Run, escrow: Escrow) -> None:
    """Ask for the escrow's ending (release or refund) through the api, as a client would:
    a 503 (the engine slow to take it, "nothing changed") is retried with the same key."""
    action = escrow.case.ending
    assert action != "fail"
    key = str(uuid.uuid4())
    unavailable = 0

    async def answered() -> bool:
        nonlocal unavailable
        answer = await run.http.post(
            f"/v1/escrows/{escrow.id}/{action}",
            json={"reason": escrow.case.label},
            headers=keyed(key),
        )
        if answer.status_code == 503:
            unavailable += 1
            return False
        status = (await _statuses(run.pool, [escrow]))[escrow.id]
        if answer.status_code == 409 and unavailable and status in _TAKEN[action]:
            # The api's 503 said nothing changed, but the workflow had taken the order; the
            # retry with the same key is then refused for the client's own request (reported,
            # api/escrows.py). The saga's outcome is what this test checks.
            run.refused_own_retry.append(escrow.case.label)
            return True
        assert answer.status_code in (200, 202), answer.text
        return True

    await wait_for(answered, timeout=60, interval=0.5, what=f"{escrow.case.label} {action}")


async def end_the_open_ones(run: Run, escrows: list[Escrow]) -> None:
    """Escrows crashed while funding wait for their seeded release or refund once funded."""
    open_ones = [e for e in escrows if e.case.boundary.phase == "funding"]

    async def funded_then_settled(escrow: Escrow) -> None:
        async def funded() -> bool:
            return (await _statuses(run.pool, [escrow]))[escrow.id] == EscrowStatus.FUNDED

        await wait_for(funded, timeout=120, interval=0.2, what=f"{escrow.case.label} funded")
        await settle(run, escrow)

    await asyncio.gather(*(funded_then_settled(e) for e in open_ones))
    run.mark("open ones settled")


async def wait_all_final(run: Run, escrows: list[Escrow], *, timeout: float) -> None:
    async def final() -> bool:
        statuses = await _statuses(run.pool, escrows)
        return all(status in FINAL for status in statuses.values())

    try:
        await wait_for(final, timeout=timeout, interval=0.5, what="every escrow to end")
    except AssertionError:
        statuses = await _statuses(run.pool, escrows)
        stuck = [
            f"{e.case.label}: {statuses[e.id]}" for e in escrows if statuses[e.id] not in FINAL
        ]
        raise AssertionError(f"escrows in between: {stuck}\n{run.worker.log}") from None


# -- the checks ----------------------------------------------------------------------------------


async def assert_escrow_whole(run: Run, client: Client, escrow: Escrow) -> None:
    """One escrow after the run: final as its case implies, a valid audited path, each ledger
    key once with the right legs, balances back or paid, the provider paid at most once, and
    the crashed step's attempt timed out and retried."""
    case, pool = escrow.case, run.pool
    label = case.label
    row = await pool.fetchrow(
        "SELECT status, payout_transfer_id FROM escrows WHERE id = $1", escrow.id
    )
    assert row is not None
    assert row["status"] == case.final, label
    handle = client.get_workflow_handle(escrow_workflow_id(escrow.id))
    assert await handle.result() == case.final, label
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED, label
    path = {
        EscrowStatus.FAILED: ["created", "funding", "failed"],
        EscrowStatus.RELEASED: ["created", "funding", "funded", "releasing", "released"],
        EscrowStatus.REFUNDED: ["created", "funding", "funded", "refunding", "refunded"],
    }[case.final]
    await assert_history(pool, escrow.id, path)

    # Each effect once per key, with the legs its key names, and nothing else on the escrow.
    expected = _expected_movements(escrow)
    rows = await pool.fetch(
        "SELECT t.idempotency_key, p.account_id, p.amount FROM ledger_transactions t"
        " JOIN postings p ON p.transaction_id = t.id WHERE t.idempotency_key LIKE $1",
        _like(f"escrow:{escrow.id}:") + "%",
    )
    posted: dict[str, dict[str, int]] = {}
    for r in rows:
        posted.setdefault(r["idempotency_key"], {})[r["account_id"]] = r["amount"]
    assert posted == expected, label
    touching = await pool.fetchval(
        "SELECT count(DISTINCT transaction_id) FROM postings WHERE account_id = $1", escrow.id
    )
    assert touching == len(expected), label

    accounts = [*escrow.sources, escrow.id] + ([escrow.beneficiary] if escrow.beneficiary else [])
    rows = await pool.fetch(
        "SELECT id, balance FROM ledger_accounts WHERE id = ANY($1::text[])", accounts
    )
    balances: dict[str, int] = {r["id"]: r["balance"] for r in rows}
    paid = case.final == EscrowStatus.RELEASED
    for wallet, start, amount in zip(escrow.sources, case.balances, case.amounts, strict=True):
        assert balances[wallet] == (start - amount if paid else start), (label, wallet)
    assert balances[escrow.id] == 0, label
    if escrow.beneficiary:
        assert balances[escrow.beneficiary] == (sum(case.amounts) if paid else 0), label

    # The provider: at most one transfer per escrow, exactly one if paid out.
    transfers = [t for t in run.sink.transfers() if _releases(escrow, t["idempotency_key"])]
    paid_out = paid and escrow.account is not None
    assert len(transfers) == (1 if paid_out else 0), (label, transfers)
    if paid_out:
        assert escrow.account is not None
        assert transfers[0]["amount"] == sum(case.amounts), label
        assert run.sink.balance(escrow.account, CURRENCY) == sum(case.amounts), label
        assert row["payout_transfer_id"] == transfers[0]["id"], label
    assert escrow.effect_seen_before_kill is (case.moment == "after"), label
    if case.boundary.name == "payout":
        calls = [c for c in run.sink.calls() if _releases(escrow, c["idempotency_key"])]
        statuses = [c["status"] for c in calls]
        if case.moment == "after":
            # Committed, its answer lost with the worker; a retry got the original back.
            assert statuses[0] == 201 and 200 in statuses[1:], (label, statuses)
        else:
            # Never reached the provider before the kill; paid once after it.
            assert statuses[0] == 201 and calls[0]["at"] > escrow.killed_at, (label, statuses)

    # Temporal noticed the kill at this step and ran it again.
    assert await _rerun_after_the_kill(client, escrow), label

    if case.boundary.name == "return":
        alert = await pool.fetchrow(
            "SELECT status FROM alerts WHERE dedup_key = $1",
            f"escrow_compensation_slow:{escrow.id}",
        )
        assert alert is not None and alert["status"] == "resolved", (label, alert)


def _expected_movements(escrow: Escrow) -> dict[str, dict[str, int]]:
    """The ledger keys the escrow must have used, each with its legs."""
    case = escrow.case
    movements: dict[str, dict[str, int]] = {}
    debited = [
        (wallet, amount)
        for i, (wallet, amount) in enumerate(zip(escrow.sources, case.amounts, strict=True))
        if i != case.failing
    ]
    for wallet, amount in debited:
        movements[debit_key(escrow.id, wallet)] = {wallet: -amount, escrow.id: amount}
    if case.final in (EscrowStatus.FAILED, EscrowStatus.REFUNDED):
        for wallet, amount in debited:
            movements[return_key(escrow.id, wallet)] = {escrow.id: -amount, wallet: amount}
    if case.final == EscrowStatus.RELEASED:
        to = escrow.beneficiary or world_account(CURRENCY)
        total = sum(case.amounts)
        movements[release_key(escrow.id)] = {escrow.id: -total, to: total}
    return movements


async def _rerun_after_the_kill(client: Client, escrow: Escrow) -> bool:
    """Whether the escrow's history shows Temporal noticed the kill at the crashed step and ran
    it again: as a regular activity, an attempt after one that timed out (start-to-close: the
    worker holding it was gone); as a local activity (which runs inside a workflow task), the
    step recorded only after a workflow task timed out."""
    boundary = escrow.case.boundary
    target = escrow.sources[escrow.case.target]
    history = await client.get_workflow_handle(escrow_workflow_id(escrow.id)).fetch_history()
    ours: set[int] = set()
    task_timed_out = False
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
            task_timed_out = True
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = event.marker_recorded_event_attributes
            if marker.marker_name != LOCAL_ACTIVITY_MARKER or "data" not in marker.details:
                continue
            data = json.loads(marker.details["data"].payloads[0].data)
            kind = data.get("activity_type", data.get("activityType"))
            if kind == boundary.activity and task_timed_out:
                return True
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled = event.activity_task_scheduled_event_attributes
            if scheduled.activity_type.name != boundary.activity:
                continue
            arg = json.loads(scheduled.input.payloads[0].data)
            if boundary.activity == "move_escrow" and arg["to_status"] != boundary.status:
                continue
            if "wallet_id" in arg and arg["wallet_id"] != target:
                continue
            ours.add(event.event_id)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            if started.scheduled_event_id in ours:
                failure = started.last_failure
                if started.attempt >= 2 and (
                    failure.HasField("timeout_failure_info")
                    and failure.timeout_failure_info.timeout_type
                    == TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE
                ):
                    return True
    return False


async def _effect_visible(run: Run, escrow: Escrow) -> bool:
    """Whether the crashed step's effect is committed (read from another session, or at the
    provider)."""
    boundary, pool = escrow.case.boundary, run.pool
    target = escrow.sources[escrow.case.target]
    if boundary.activity == PAYOUT_TRANSFER_ACTIVITY:
        return any(_releases(escrow, t["idempotency_key"]) for t in run.sink.transfers())
    if boundary.activity == "debit_escrow_source":
        key = debit_key(escrow.id, target)
    elif boundary.activity == "return_escrow_source":
        key = return_key(escrow.id, target)
    else:
        status = await pool.fetchval("SELECT status FROM escrows WHERE id = $1", escrow.id)
        return bool(status == boundary.status)
    found = await pool.fetchval(
        "SELECT count(*) FROM ledger_transactions WHERE idempotency_key = $1", key
    )
    return bool(found)


def _releases(escrow: Escrow, key: str | None) -> bool:
    """Whether a transfer's idempotency key is one of this escrow's releases."""
    return key is not None and key.startswith(release_key(escrow.id))


async def _statuses(pool: asyncpg.Pool, escrows: list[Escrow]) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT id, status FROM escrows WHERE id = ANY($1::text[])", [e.id for e in escrows]
    )
    return {row["id"]: row["status"] for row in rows}


async def _limited(limit: int, work: list[Awaitable[T]]) -> list[T]:
    """Await ``work`` at most ``limit`` at a time, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(item: Awaitable[T]) -> T:
        async with gate:
            return await item

    return list(await asyncio.gather(*(one(item) for item in work)))
