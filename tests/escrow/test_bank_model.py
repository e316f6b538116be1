"""P3 (RELIABILITY.md §4): Jepsen's bank test on the escrow saga, as a Hypothesis state machine.

Jepsen's sizing: 8 wallets holding 100 in all, amounts of at most 5. Each example mixes top-ups,
escrows funded from one to three wallets (some refused for insufficient funds and compensated),
releases to a wallet or an external account (confirmed or refused by the provider, then held in
``release_failed``), refunds and expiries, with the saga's steps of several escrows interleaved as
concurrent workflows would interleave them. It adds what Temporal does to activities: a step
executed again after its effect committed and its result was lost (a retry with the same input),
a completed step replayed at any later time (a late duplicate, moves included: the escrow may
have come round ``release_failed → releasing`` since), a refused debit's first attempt running
after the escrow has left ``funding`` (refused, nothing moves), and a crash (the step's
transaction aborted before commit, then retried).

Whole workflows would not fit 10,000 steps in the time budget, so this drives the saga's own
activities (:class:`activities.escrow.EscrowActivities`) and the core functions under them against
real Postgres, in the order :class:`workflows.escrow.EscrowWorkflow` runs them: move to
``funding``, debit each source, then either return every debit made and move to ``failed`` or move
to ``funded``; move to ``releasing``, pay out (the provider's answer is drawn here) and release, or
move to ``release_failed``; move to ``refunding`` and refund. Conservation lives in Postgres, and
that is where the checks read it.

After every step: the books equal the model (each wallet and escrow holding, each escrow's
status, the set of ledger keys posted), wallets + escrow holdings + settled out = money in, every
ledger transaction sums to zero, no key names two transactions, no balance is negative. Each
example works in a currency of its own in one database, so nothing needs cleaning between them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import string
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar, Literal

import asyncpg
from hypothesis import HealthCheck, settings as hypothesis_settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from temporalio.exceptions import ApplicationError

from activities.escrow import EscrowActivities
from core import escrow, money
from core.contracts import (
    EscrowMoveInput,
    EscrowSettleInput,
    EscrowSource,
    EscrowSourceInput,
    EscrowStatus,
)
from core.db import Connection, connect_pool
from core.errors import EscrowMoneyRefused, InsufficientFunds
from core.tenancy import create_merchant
from tests.support import fresh_database

WALLETS = 8
TOTAL = 100
MAX_AMOUNT = 5
EXAMPLES = int(os.environ.get("P3_EXAMPLES", "200"))
STEPS = 50
OPEN = 3
"""Escrows under way at once: enough to interleave sagas, few enough that most of them end."""
ACTOR = "p3"

S = EscrowStatus
HOLDING = (S.FUNDED, S.RELEASING, S.RELEASE_FAILED, S.REFUNDING)
FINAL = (S.RELEASED, S.REFUNDED, S.FAILED)
NEVER = datetime(2100, 1, 1, tzinfo=UTC)
"""Expiry is an operator's refund here (the ``order`` rule), so escrows never expire by date."""

_currencies = ("".join(c) for c in itertools.product(string.ascii_uppercase, repeat=3))


class _Crash(Exception):
    """The worker died before the step's transaction committed."""


@dataclass(frozen=True)
class Step:
    """One activity execution of the saga: its name and its input."""

    kind: Literal["move", "debit", "return", "release", "refund"]
    arg: EscrowMoveInput | EscrowSourceInput | EscrowSettleInput


@dataclass
class EscrowModel:
    """What the books should say about one escrow, and where its saga is."""

    id: str
    sources: list[EscrowSource]
    beneficiary_wallet: str | None
    beneficiary_account: str | None
    status: EscrowStatus = S.CREATED
    attempted: set[str] = field(default_factory=set)
    debited: list[EscrowSource] = field(default_factory=list)
    refused: list[Step] = field(default_factory=list)
    version: int = escrow.CREATED_VERSION
    returned: set[str] = field(default_factory=set)
    order: Literal["release", "refund"] | None = None
    releases: int = 0
    held: int = 0

    @property
    def amount(self) -> int:
        return sum(source.amount for source in self.sources)


class EscrowBank(RuleBasedStateMachine):
    """The model and the rules, on the test's own event loop (``runner``) and pool, which the test
    binds in a subclass."""

    runner: ClassVar[asyncio.Runner]
    pool: ClassVar[asyncpg.Pool]

    def __init__(self) -> None:
        super().__init__()
        self.activities = EscrowActivities(self.pool)
        self.currency = next(_currencies)
        self.wallets: list[str] = []
        self.balances: dict[str, int] = {}
        self.escrows: dict[str, EscrowModel] = {}
        self.keys: set[str] = set()
        self.money_in = 0
        self.settled_out = 0
        self.done: list[Step] = []
        self.watermark = 0
        self.top_ups = 0

    # -- setup and top-ups ---------------------------------------------------------------------

    @initialize(cuts=st.lists(st.integers(0, TOTAL), min_size=WALLETS - 1, max_size=WALLETS - 1))
    def open_wallets(self, cuts: list[int]) -> None:
        """Eight wallets of one merchant holding ``TOTAL`` between them."""
        bounds = [0, *sorted(cuts), TOTAL]
        self.runner.run(self._open_wallets([b - a for a, b in itertools.pairwise(bounds)]))

    async def _open_wallets(self, amounts: list[int]) -> None:
        async with self.pool.acquire() as conn:
            self.watermark = await conn.fetchval(
                "SELECT coalesce(max(id), 0) FROM ledger_transactions"
            )
            merchant = f"m-p3-{uuid.uuid4().hex[:10]}"
            await create_merchant(
                conn, merchant, name=None, email=None, partner_ids=[], actor=ACTOR
            )
            self.merchant = merchant
            for amount in amounts:
                wallet = (await money.open_wallet(conn, merchant, self.currency, actor=ACTOR))["id"]
                self.wallets.append(wallet)
                self.balances[wallet] = 0
                if amount:
                    await self._top_up(conn, wallet, amount)

    async def _top_up(self, conn: Connection, wallet: str, amount: int) -> None:
        self.top_ups += 1
        key = f"p3:{self.currency}:top-up:{self.top_ups}"
        await money.top_up(conn, wallet, amount, key=key, actor=ACTOR)
        self.keys.add(key)
        self.balances[wallet] += amount
        self.money_in += amount

    @rule(
        wallet=st.integers(0, WALLETS - 1),
        amount=st.integers(1, MAX_AMOUNT),
        repeated=st.booleans(),
    )
    def top_up(self, wallet: int, amount: int, repeated: bool) -> None:
        """Money comes in from outside; a client's repeat with the same key moves nothing."""

        async def top_up() -> None:
            async with self.pool.acquire() as conn:
                await self._top_up(conn, self.wallets[wallet], amount)
                if repeated:
                    key = f"p3:{self.currency}:top-up:{self.top_ups}"
                    again = await money.top_up(
                        conn, self.wallets[wallet], amount, key=key, actor=ACTOR
                    )
                    assert again.replayed

        self.runner.run(top_up())

    # -- the saga ------------------------------------------------------------------------------

    @precondition(lambda self: sum(e.status not in FINAL for e in self.escrows.values()) < OPEN)
    @rule(
        funding=st.lists(
            st.tuples(st.integers(0, WALLETS - 1), st.integers(1, MAX_AMOUNT)),
            min_size=1,
            max_size=3,
            unique_by=lambda source: source[0],
        ),
        beneficiary=st.one_of(st.integers(0, WALLETS - 1), st.just("external")),
    )
    def create_escrow(self, funding: list[tuple[int, int]], beneficiary: int | str) -> None:
        """A merchant puts a prize in escrow (``created``; its workflow starts)."""
        sources = [EscrowSource(self.wallets[w], amount) for w, amount in funding]
        if isinstance(beneficiary, int) and any(w == beneficiary for w, _ in funding):
            beneficiary = "external"
        wallet = self.wallets[beneficiary] if isinstance(beneficiary, int) else None
        account = None if wallet else f"acct_{uuid.uuid4().hex[:8]}"

        async def create() -> str:
            async with self.pool.acquire() as conn:
                created = await escrow.create(
                    conn,
                    merchant_id=self.merchant,
                    currency=self.currency,
                    sources=sources,
                    beneficiary_wallet=wallet,
                    beneficiary_account=account,
                    reference="p3",
                    expires_at=NEVER,
                    actor=ACTOR,
                )
            escrow_id: str = created.row["id"]
            return escrow_id

        escrow_id = self.runner.run(create())
        self.escrows[escrow_id] = EscrowModel(escrow_id, sources, wallet, account)

    def _moving(self) -> list[str]:
        return [e.id for e in self.escrows.values() if e.status not in FINAL]

    # Three rules take a saga's next step, so that Hypothesis's swarm testing (which leaves some
    # rules out of each example) rarely leaves an example without one.

    @precondition(lambda self: bool(self._moving()))
    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        """One escrow's saga takes its next step, executed once."""
        self._advance(data, crashed=False, executions=1)

    @precondition(lambda self: bool(self._moving()))
    @rule(data=st.data())
    def advance_through_a_crash(self, data: st.DataObject) -> None:
        """One escrow's next step dies before its transaction commits, which changes nothing;
        then its retry takes the step."""
        self._advance(data, crashed=True, executions=1)

    @precondition(lambda self: bool(self._moving()))
    @rule(data=st.data(), executions=st.integers(2, 3))
    def advance_losing_results(self, data: st.DataObject, executions: int) -> None:
        """One escrow's next step commits but its result is lost, so Temporal executes it again
        with the same input: one effect, the same outcome each time."""
        self._advance(data, crashed=False, executions=executions)

    def _advance(self, data: st.DataObject, *, crashed: bool, executions: int) -> None:
        model = self.escrows[data.draw(st.sampled_from(self._moving()), label="escrow")]
        if model.status in (S.FUNDED, S.RELEASE_FAILED) and model.order is None:
            # The operator's release or refund (an expiry is the saga's own refund).
            model.order = data.draw(st.sampled_from(["release", "refund"]), label="order")
            return
        step = self._choose_step(model, data)
        if crashed:
            self.runner.run(self._crash(step))
            self.runner.run(self._check())
        outcomes = [self.runner.run(self._execute(step)) for _ in range(executions)]
        assert all(outcome == outcomes[0] for outcome in outcomes), outcomes
        self._apply(model, step, outcomes[0])

    @precondition(lambda self: bool(self.done))
    @rule(data=st.data())
    def late_duplicate(self, data: st.DataObject) -> None:
        """A completed step executes again later, its escrow having moved on since (a zombie
        attempt that outlived its timeout): a money step's ledger key, a move's version (the
        escrow may have come round ``release_failed → releasing``) make it change nothing."""
        step = data.draw(st.sampled_from(self.done), label="step")
        outcome = self.runner.run(self._execute(step))
        assert outcome == "ok", (step, outcome)

    def _refused_past_funding(self) -> list[Step]:
        return [
            step
            for model in self.escrows.values()
            if model.status not in (S.CREATED, S.FUNDING)
            for step in model.refused
        ]

    @precondition(lambda self: bool(self._refused_past_funding()))
    @rule(data=st.data())
    def late_refused_debit(self, data: st.DataObject) -> None:
        """A debit refused for insufficient funds has a first attempt that never committed and
        runs after the escrow left ``funding`` (its wallet may hold enough by now): refused, it
        moves nothing."""
        step = data.draw(st.sampled_from(self._refused_past_funding()), label="step")
        outcome = self.runner.run(self._execute(step))
        assert outcome == EscrowMoneyRefused.__name__, (step, outcome)

    def _next_step(self, model: EscrowModel) -> Step | list[Step]:
        """The steps the workflow may run next (several when its activities run at once)."""
        if model.status == S.CREATED:
            return self._move(model, S.FUNDING)
        if model.status == S.FUNDING:
            pending = [s for s in model.sources if s.wallet_id not in model.attempted]
            if pending:
                return [Step("debit", self._leg(model, s)) for s in pending]
            if not model.refused:
                return self._move(model, S.FUNDED)
            unreturned = [s for s in model.debited if s.wallet_id not in model.returned]
            if unreturned:
                return [Step("return", self._leg(model, s)) for s in unreturned]
            return self._move(model, S.FAILED)
        if model.status in (S.FUNDED, S.RELEASE_FAILED):
            return self._move(model, S.RELEASING if model.order == "release" else S.REFUNDING)
        if model.status == S.RELEASING:
            return Step("release", EscrowSettleInput(model.id, model.version, ACTOR, None))
        if model.status == S.REFUNDING:
            return Step("refund", EscrowSettleInput(model.id, model.version, ACTOR, None))
        raise AssertionError(f"{model.id} is {model.status}: its saga has ended")

    def _choose_step(self, model: EscrowModel, data: st.DataObject) -> Step:
        steps = self._next_step(model)
        if isinstance(steps, list):
            return data.draw(st.sampled_from(steps), label="concurrent step")
        if steps.kind == "release" and model.beneficiary_account is not None:
            # Transfer first: the provider confirms (its transfer id goes into the release) or
            # refuses for good (the escrow is held, nothing written but the move).
            if data.draw(st.booleans(), label="provider refuses"):
                return self._move(model, S.RELEASE_FAILED)
            transfer = f"tr_{model.id}_{model.releases}"
            settle = EscrowSettleInput(model.id, model.version, ACTOR, None, transfer)
            return Step("release", settle)
        return steps

    def _move(self, model: EscrowModel, to: EscrowStatus) -> Step:
        move = EscrowMoveInput(model.id, model.version, model.status, to, ACTOR, None)
        return Step("move", move)

    def _leg(self, model: EscrowModel, source: EscrowSource) -> EscrowSourceInput:
        return EscrowSourceInput(
            model.id, source.wallet_id, source.amount, self.currency, actor=ACTOR
        )

    async def _execute(self, step: Step) -> str:
        """Run the step's activity; ``ok``, or the type of the error it failed with."""
        arg, activities = step.arg, self.activities
        try:
            if isinstance(arg, EscrowMoveInput):
                await activities.move_escrow(arg)
            elif isinstance(arg, EscrowSourceInput) and step.kind == "debit":
                await activities.debit_escrow_source(arg)
            elif isinstance(arg, EscrowSourceInput):
                await activities.return_escrow_source(arg)
            elif step.kind == "release":
                await activities.release_escrow(arg)
            else:
                await activities.refund_escrow(arg)
        except ApplicationError as refused:
            assert refused.non_retryable
            return str(refused.type)
        return "ok"

    async def _crash(self, step: Step) -> None:
        """The step's effect through the core function the activity calls, in a transaction
        that never commits."""
        arg = step.arg
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    if isinstance(arg, EscrowMoveInput):
                        await escrow.move(
                            conn,
                            arg.escrow_id,
                            arg.from_status,
                            arg.to_status,
                            version=arg.version,
                            actor=arg.actor,
                            reason=arg.reason,
                        )
                    elif isinstance(arg, EscrowSourceInput):
                        effect = (
                            escrow.debit_source if step.kind == "debit" else escrow.return_source
                        )
                        await effect(
                            conn,
                            arg.escrow_id,
                            arg.wallet_id,
                            arg.amount,
                            arg.currency,
                            actor=arg.actor,
                        )
                    elif step.kind == "release":
                        await escrow.release(
                            conn,
                            arg.escrow_id,
                            version=arg.version,
                            actor=arg.actor,
                            reason=arg.reason,
                            transfer_id=arg.transfer_id,
                        )
                    else:
                        await escrow.refund(
                            conn, arg.escrow_id, version=arg.version, actor=arg.actor, reason=None
                        )
                    raise _Crash
            except (_Crash, InsufficientFunds):
                pass

    def _apply(self, model: EscrowModel, step: Step, outcome: str) -> None:
        """What the step should have done to the books, checked by the invariants next."""
        arg = step.arg
        if step.kind == "debit":
            assert isinstance(arg, EscrowSourceInput)
            model.attempted.add(arg.wallet_id)
            enough = self.balances[arg.wallet_id] >= arg.amount
            assert outcome == ("ok" if enough else InsufficientFunds.__name__), (step, outcome)
            if enough:
                self.balances[arg.wallet_id] -= arg.amount
                model.held += arg.amount
                model.debited.append(EscrowSource(arg.wallet_id, arg.amount))
                self.keys.add(escrow.debit_key(model.id, arg.wallet_id))
            else:
                model.refused.append(step)
                return
        else:
            assert outcome == "ok", (step, outcome)
        if step.kind == "return":
            assert isinstance(arg, EscrowSourceInput)
            model.returned.add(arg.wallet_id)
            self._give_back(model, arg.wallet_id, arg.amount)
        elif step.kind == "move":
            assert isinstance(arg, EscrowMoveInput)
            model.status = arg.to_status
            model.version += 1
            if arg.to_status in (S.RELEASING, S.REFUNDING):
                model.order = None
            model.releases += arg.to_status == S.RELEASING
        elif step.kind == "release":
            if model.beneficiary_wallet is not None:
                self.balances[model.beneficiary_wallet] += model.held
            else:
                self.settled_out += model.held
            model.held = 0
            model.status = S.RELEASED
            model.version += 1
            self.keys.add(escrow.release_key(model.id))
        elif step.kind == "refund":
            for source in model.sources:
                self._give_back(model, source.wallet_id, source.amount)
            model.status = S.REFUNDED
            model.version += 1
        self.done.append(step)

    def _give_back(self, model: EscrowModel, wallet: str, amount: int) -> None:
        self.balances[wallet] += amount
        model.held -= amount
        self.keys.add(escrow.return_key(model.id, wallet))

    # -- Jepsen's checks -----------------------------------------------------------------------

    @invariant()
    def books_match_the_model(self) -> None:
        """Wallets + escrow holdings + settled out = money in; each figure as the model says;
        every transaction sums to zero; each key names one transaction; nothing negative,
        the world account's row at 0."""
        if not self.wallets:
            return
        self.runner.run(self._check())

    async def _check(self) -> None:
        books = await self.pool.fetchrow(
            _BOOKS,
            self.currency,
            money.world_account(self.currency),
            self.watermark,
            list(self.escrows),
        )
        assert books is not None
        accounts = {id_: (kind, balance) for id_, (kind, balance) in books["accounts"].items()}
        keys, statuses = books["keys"] or [], books["statuses"] or {}
        flows = {"money_in": books["money_in"], "out": books["settled_out"]}
        unbalanced = books["unbalanced"]
        wallets = sum(balance for kind, balance in accounts.values() if kind == "wallet")
        held = sum(balance for kind, balance in accounts.values() if kind == "escrow")
        assert wallets + held + flows["out"] == flows["money_in"] == self.money_in
        assert flows["out"] == self.settled_out
        assert not unbalanced, unbalanced
        assert len(keys) == len(set(keys)), sorted(keys)
        assert set(keys) == self.keys, set(keys) ^ self.keys
        assert all(b >= 0 for _, b in accounts.values()), accounts
        assert all(b == 0 for kind, b in accounts.values() if kind == "world"), accounts
        assert {w: accounts[w][1] for w in self.wallets} == self.balances
        for model in self.escrows.values():
            assert statuses[model.id] == model.status, (model, statuses[model.id])
            assert accounts[model.id][1] == model.held, model
            if model.status in HOLDING:
                assert model.held == model.amount, model
            if model.status in (*FINAL, S.CREATED):
                assert model.held == 0, model


async def _without_waiting_for_flushes(database_url: str) -> None:
    """Commits of this database stop waiting for the WAL flush: what each transaction sees and
    commits is unchanged (the crashes here are the worker's, not Postgres's), and 10,000 steps
    no longer queue behind the disk of a busy machine."""
    conn = await asyncpg.connect(database_url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    finally:
        await conn.close()


# One statement, so one snapshot and one round trip per step.
_BOOKS = """
SELECT
  (SELECT json_object_agg(id, json_build_array(kind, balance)) FROM ledger_accounts
   WHERE currency = $1) AS accounts,
  (SELECT coalesce(sum(-p.amount), 0) FROM postings p
   JOIN ledger_transactions t ON t.id = p.transaction_id
   WHERE p.account_id = $2 AND t.kind = 'top_up') AS money_in,
  (SELECT coalesce(sum(p.amount), 0) FROM postings p
   JOIN ledger_transactions t ON t.id = p.transaction_id
   WHERE p.account_id = $2 AND t.kind = 'escrow_payout') AS settled_out,
  (SELECT array_agg(transaction_id) FROM (SELECT transaction_id FROM postings
   WHERE transaction_id > $3 GROUP BY transaction_id, currency HAVING sum(amount) <> 0) AS off)
   AS unbalanced,
  (SELECT array_agg(idempotency_key) FROM ledger_transactions WHERE id > $3) AS keys,
  (SELECT json_object_agg(id, status) FROM escrows WHERE id = ANY($4::text[])) AS statuses
"""


def test_the_books_balance_through_any_saga_history(postgres_admin_url: str) -> None:
    """Whatever the mix of top-ups, escrows, releases, refunds, retries, late duplicates and
    crashes, after every step the books equal the model and Jepsen's bank checks hold."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        database_url = runner.run(fresh_database(postgres_admin_url))
        runner.run(_without_waiting_for_flushes(database_url))
        pool = runner.run(connect_pool(database_url, size=2))
        try:
            bound = type("BoundEscrowBank", (EscrowBank,), {"runner": runner, "pool": pool})
            run_state_machine_as_test(
                bound,
                settings=hypothesis_settings(
                    max_examples=EXAMPLES,
                    stateful_step_count=STEPS,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                ),
            )
        finally:
            runner.run(pool.close())
