"""The ledger's rules hold in Postgres itself: raw SQL cannot post an unbalanced transaction,
overdraw a wallet, change a balance without a posting, rewrite history or reuse a key; and
:mod:`core.money` moves money once per key, refusing overdrafts cleanly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from core import money
from core.db import Connection
from core.errors import CurrencyMismatch, IdempotencyKeyReused, InsufficientFunds
from tests.money_support import assert_books_balance, new_merchant


@pytest.fixture(autouse=True)
async def books_balance(pool: asyncpg.Pool) -> AsyncIterator[None]:
    yield
    await assert_books_balance(pool)


async def wallets(pool: asyncpg.Pool, count: int, currency: str = "EUR") -> list[str]:
    merchant = await new_merchant(pool)
    async with pool.acquire() as conn:
        return [
            (await money.open_wallet(conn, merchant, currency, actor="tests"))["id"]
            for _ in range(count)
        ]


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


async def raw_movement(conn: Connection, legs: list[tuple[str, int]]) -> None:
    """Post ``legs`` with plain SQL, as a bug or a hand-written fix would."""
    async with conn.transaction():
        transaction_id = await conn.fetchval(
            "INSERT INTO ledger_transactions (idempotency_key, kind, actor)"
            " VALUES ($1, 'manual', 'tests') RETURNING id",
            key(),
        )
        for account_id, amount in legs:
            await conn.execute(
                "INSERT INTO postings (transaction_id, account_id, currency, amount)"
                " VALUES ($1, $2, 'EUR', $3)",
                transaction_id,
                account_id,
                amount,
            )


async def test_the_database_refuses_an_unbalanced_transaction(pool: asyncpg.Pool) -> None:
    """Postings that do not sum to zero are refused at commit, whoever wrote them."""
    a, b = await wallets(pool, 2)
    async with pool.acquire() as conn:
        await money.top_up(conn, a, 1, key=key(), actor="tests")
        with pytest.raises(asyncpg.CheckViolationError, match="does not sum to zero"):
            await raw_movement(conn, [(a, 5)])
        with pytest.raises(asyncpg.CheckViolationError, match="does not sum to zero"):
            await raw_movement(conn, [(money.world_account("EUR"), -5), (a, 5), (b, 1)])
        with pytest.raises(asyncpg.CheckViolationError, match="has no postings"):
            await raw_movement(conn, [])
        assert (await money.balance(conn, a))["balance"] == 1


async def test_the_database_refuses_a_negative_balance(pool: asyncpg.Pool) -> None:
    """A balanced transaction that would overdraw a wallet is refused by the CHECK."""
    a, b = await wallets(pool, 2)
    async with pool.acquire() as conn:
        await money.top_up(conn, a, 3, key=key(), actor="tests")
        with pytest.raises(asyncpg.CheckViolationError, match="balance_not_negative"):
            await raw_movement(conn, [(a, -4), (b, 4)])
        await raw_movement(conn, [(a, -3), (b, 3)])
        assert (await money.balance(conn, a))["balance"] == 0
        assert (await money.balance(conn, b))["balance"] == 3


async def test_balances_and_history_change_only_through_new_postings(pool: asyncpg.Pool) -> None:
    """A balance set directly, a posting or transaction edited or deleted, a reused key or a
    posting in another currency than its account: all refused."""
    (a,) = await wallets(pool, 1)
    async with pool.acquire() as conn:
        moved = await money.top_up(conn, a, 10, key=key(), actor="tests")
        refused = [
            ("UPDATE ledger_accounts SET balance = 1000 WHERE id = $1", a),
            ("UPDATE postings SET amount = 1000 WHERE transaction_id = $1", moved.transaction_id),
            ("DELETE FROM postings WHERE transaction_id = $1", moved.transaction_id),
            ("DELETE FROM ledger_transactions WHERE id = $1", moved.transaction_id),
        ]
        for statement, argument in refused:
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(statement, argument)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO ledger_transactions (idempotency_key, kind, actor)"
                " VALUES ($1, 'manual', 'tests')",
                moved.idempotency_key,
            )
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            async with conn.transaction():
                transaction_id = await conn.fetchval(
                    "INSERT INTO ledger_transactions (idempotency_key, kind, actor)"
                    " VALUES ($1, 'manual', 'tests') RETURNING id",
                    key(),
                )
                await conn.execute(
                    "INSERT INTO postings (transaction_id, account_id, currency, amount)"
                    " VALUES ($1, $2, 'USD', 1)",
                    transaction_id,
                    a,
                )
        assert (await money.balance(conn, a))["balance"] == 10


async def test_a_key_moves_money_once_and_names_one_movement(pool: asyncpg.Pool) -> None:
    """Repeating a movement with its key returns the first one; other legs are refused."""
    a, b = await wallets(pool, 2)
    async with pool.acquire() as conn:
        first = await money.top_up(conn, a, 10, key=key(), actor="tests")
    async with pool.acquire() as conn:
        transfer_key = key()
        moved = await money.transfer(conn, a, b, 4, key=transfer_key, actor="tests")
        again = await money.transfer(conn, a, b, 4, key=transfer_key, actor="tests")
        assert again.replayed and not moved.replayed
        assert again.transaction_id == moved.transaction_id
        with pytest.raises(IdempotencyKeyReused):
            await money.transfer(conn, a, b, 5, key=transfer_key, actor="tests")
        with pytest.raises(IdempotencyKeyReused):
            await money.transfer(conn, b, a, 4, key=first.idempotency_key, actor="tests")
        assert (await money.balance(conn, a))["balance"] == 6
        assert (await money.balance(conn, b))["balance"] == 4


async def test_overdrafts_and_currency_mismatches_are_refused_cleanly(pool: asyncpg.Pool) -> None:
    """Nothing moves, and the key stays free for a retry that can succeed."""
    a, b = await wallets(pool, 2)
    (dollars,) = await wallets(pool, 1, "USD")
    async with pool.acquire() as conn:
        retried = key()
        with pytest.raises(InsufficientFunds):
            await money.transfer(conn, a, b, 1, key=retried, actor="tests")
        with pytest.raises(CurrencyMismatch):
            await money.transfer(conn, a, dollars, 1, key=key(), actor="tests")
        await money.top_up(conn, a, 1, key=key(), actor="tests")
        assert not (await money.transfer(conn, a, b, 1, key=retried, actor="tests")).replayed
        audited = await conn.fetchval(
            "SELECT count(*) FROM audit_log a JOIN ledger_transactions t"
            " ON a.entity_type = 'ledger_transaction' AND a.entity_id = t.id::text"
            " WHERE t.idempotency_key = $1",
            retried,
        )
        assert audited == 1
