"""Stale saga steps: an attempt of a step that comes again after the escrow moved on (a zombie
activity that outlived its timeout, or a result lost and retried later) changes nothing. Driven
through the saga's activities against real Postgres, in the order the workflow runs them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError

from activities.escrow import EscrowActivities
from core import escrow, money
from core.contracts import (
    EscrowMoveInput,
    EscrowSettleInput,
    EscrowSource,
    EscrowSourceInput,
    EscrowStatus as S,
)
from core.errors import EscrowMoneyRefused, IllegalTransition
from tests.escrow.support import assert_conserved, assert_history, balances
from tests.money_support import new_merchant

ACTOR = "tests"


class Saga:
    """One escrow's saga steps, each naming the version the escrow is at, as the workflow's."""

    def __init__(self, pool: asyncpg.Pool, escrow_id: str) -> None:
        self.steps = EscrowActivities(pool)
        self.id = escrow_id
        self.status = S.CREATED
        self.version = escrow.CREATED_VERSION

    def move_input(self, to: S) -> EscrowMoveInput:
        return EscrowMoveInput(self.id, self.version, self.status, to, ACTOR, None)

    async def move(self, to: S) -> EscrowMoveInput:
        step = self.move_input(to)
        await self.steps.move_escrow(step)
        self.status, self.version = to, self.version + 1
        return step

    def leg(self, wallet: str, amount: int) -> EscrowSourceInput:
        return EscrowSourceInput(self.id, wallet, amount, "EUR", ACTOR)

    def settle(self, transfer_id: str | None = None) -> EscrowSettleInput:
        return EscrowSettleInput(self.id, self.version, ACTOR, None, transfer_id)


async def _escrow(
    pool: asyncpg.Pool, amounts: list[tuple[int, int]], *, beneficiary: bool = False
) -> tuple[Saga, list[str]]:
    """An escrow (created) funded by new wallets: (balance, amount in the escrow) each, and a
    beneficiary wallet last when asked (an external account otherwise)."""
    merchant = await new_merchant(pool)
    async with pool.acquire() as conn:
        wallets = []
        for balance, _ in [*amounts, *([(0, 0)] if beneficiary else [])]:
            wallet = (await money.open_wallet(conn, merchant, "EUR", actor=ACTOR))["id"]
            if balance:
                key = f"top-up:{uuid.uuid4()}"
                await money.top_up(conn, wallet, balance, key=key, actor=ACTOR)
            wallets.append(wallet)
        created = await escrow.create(
            conn,
            merchant_id=merchant,
            currency="EUR",
            sources=[EscrowSource(w, a) for w, (_, a) in zip(wallets, amounts, strict=False)],
            beneficiary_wallet=wallets[-1] if beneficiary else None,
            beneficiary_account=None if beneficiary else "acct_stale",
            reference="stale steps",
            expires_at=datetime.now(UTC) + timedelta(days=1),
            actor=ACTOR,
        )
    return Saga(pool, created.row["id"]), wallets


async def _failed_funding(pool: asyncpg.Pool) -> tuple[Saga, str, str]:
    """An escrow whose first source was debited and returned, its second refused: ``failed``."""
    saga, (rich, poor) = await _escrow(pool, [(10, 10), (0, 5)])
    await saga.move(S.FUNDING)
    await saga.steps.debit_escrow_source(saga.leg(rich, 10))
    with pytest.raises(ApplicationError, match="not enough"):
        await saga.steps.debit_escrow_source(saga.leg(poor, 5))
    await saga.steps.return_escrow_source(saga.leg(rich, 10))
    await saga.move(S.FAILED)
    return saga, rich, poor


async def test_a_stale_move_after_the_escrow_came_round_changes_nothing(
    pool: asyncpg.Pool,
) -> None:
    saga, (source,) = await _escrow(pool, [(10, 10)])
    await saga.move(S.FUNDING)
    await saga.steps.debit_escrow_source(saga.leg(source, 10))
    await saga.move(S.FUNDED)
    await saga.move(S.RELEASING)
    refused = await saga.move(S.RELEASE_FAILED)
    await saga.move(S.RELEASING)

    # The first release's refusal, executed again: the escrow is releasing once more.
    announced = await saga.steps.move_escrow(refused)

    assert announced == escrow.event_id(saga.id, refused.version + 1)
    row = await pool.fetchrow("SELECT status, version FROM escrows WHERE id = $1", saga.id)
    assert row is not None
    assert (row["status"], row["version"]) == (S.RELEASING, saga.version)
    await assert_history(
        pool,
        saga.id,
        ["created", "funding", "funded", "releasing", "release_failed", "releasing"],
    )


async def test_a_stale_release_of_an_earlier_round_moves_no_money(pool: asyncpg.Pool) -> None:
    saga, (source, winner) = await _escrow(pool, [(10, 10)], beneficiary=True)
    await saga.move(S.FUNDING)
    await saga.steps.debit_escrow_source(saga.leg(source, 10))
    await saga.move(S.FUNDED)
    await saga.move(S.RELEASING)
    first_round = saga.settle()
    await saga.move(S.RELEASE_FAILED)
    await saga.move(S.RELEASING)

    with pytest.raises(IllegalTransition):
        await saga.steps.release_escrow(first_round)
    assert await balances(pool, [winner, saga.id]) == [0, 10]

    await saga.steps.release_escrow(saga.settle())
    assert await balances(pool, [winner, saga.id]) == [10, 0]
    # A stale refund after the release: nothing moves either.
    with pytest.raises(IllegalTransition):
        await saga.steps.refund_escrow(EscrowSettleInput(saga.id, first_round.version, ACTOR, None))
    assert await balances(pool, [source, winner, saga.id]) == [0, 10, 0]
    await assert_conserved(pool)


async def test_a_debit_after_the_escrow_failed_is_refused(pool: asyncpg.Pool) -> None:
    saga, rich, poor = await _failed_funding(pool)
    async with pool.acquire() as conn:
        await money.top_up(conn, poor, 5, key=f"top-up:{uuid.uuid4()}", actor=ACTOR)

    # The refused debit's first attempt, which never committed, runs after all.
    with pytest.raises(ApplicationError) as refused:
        await saga.steps.debit_escrow_source(saga.leg(poor, 5))
    assert refused.value.type == EscrowMoneyRefused.__name__
    assert refused.value.non_retryable
    # The debit that was made (and returned) answers as it did, moving nothing again.
    await saga.steps.debit_escrow_source(saga.leg(rich, 10))
    await saga.steps.return_escrow_source(saga.leg(rich, 10))
    assert await balances(pool, [rich, poor, saga.id]) == [10, 5, 0]
    await assert_conserved(pool)


async def test_failing_returns_a_debit_the_saga_never_saw(pool: asyncpg.Pool) -> None:
    saga, (rich, poor) = await _escrow(pool, [(10, 10), (0, 5)])
    await saga.move(S.FUNDING)
    with pytest.raises(ApplicationError):
        await saga.steps.debit_escrow_source(saga.leg(poor, 5))
    async with pool.acquire() as conn:
        await money.top_up(conn, poor, 5, key=f"top-up:{uuid.uuid4()}", actor=ACTOR)
    # A zombie attempt of the refused debit commits while the saga compensates: the saga
    # returns only what it saw debited (nothing), and moves to failed.
    await saga.steps.debit_escrow_source(saga.leg(poor, 5))
    await saga.move(S.FAILED)

    assert await balances(pool, [rich, poor, saga.id]) == [10, 5, 0]
    keys = await pool.fetch(
        "SELECT idempotency_key FROM ledger_transactions WHERE idempotency_key LIKE $1",
        f"escrow:{saga.id}:%",
    )
    assert sorted(k["idempotency_key"] for k in keys) == [
        escrow.debit_key(saga.id, poor),
        escrow.return_key(saga.id, poor),
    ]
    await assert_conserved(pool)


async def test_a_return_of_a_debit_never_made_is_refused(pool: asyncpg.Pool) -> None:
    saga, (rich, poor) = await _escrow(pool, [(10, 5), (0, 5)])
    await saga.move(S.FUNDING)
    await saga.steps.debit_escrow_source(saga.leg(rich, 5))

    with pytest.raises(EscrowMoneyRefused):
        await saga.steps.return_escrow_source(saga.leg(poor, 5))
    assert await balances(pool, [rich, poor, saga.id]) == [5, 0, 5]

    with pytest.raises(ApplicationError):
        await saga.steps.debit_escrow_source(saga.leg(poor, 5))
    await saga.steps.return_escrow_source(saga.leg(rich, 5))
    await saga.move(S.FAILED)
    # A return after the escrow failed: the one made answers as it did, no other is made.
    await saga.steps.return_escrow_source(saga.leg(rich, 5))
    with pytest.raises(EscrowMoneyRefused):
        await saga.steps.return_escrow_source(saga.leg(poor, 5))
    assert await balances(pool, [rich, poor, saga.id]) == [10, 0, 0]
    await assert_conserved(pool)
