"""The ledger's rules hold in Postgres itself: raw SQL cannot post an unbalanced transaction,
overdraw a wallet, change a balance without a posting, rewrite history or reuse a key; and
:mod:`core.money` moves money once per key, refusing overdrafts cleanly, without ever waiting on
a currency's world account."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
from alembic import command
from alembic.config import Config

from core import money
from core.db import MIGRATIONS_DIR, Connection, connect_pool
from core.errors import CurrencyMismatch, IdempotencyKeyReused, InsufficientFunds, OperatorError
from tests.money_support import assert_books_balance, new_merchant
from tests.support import fresh_database


@pytest.fixture(autouse=True)
async def books_balance(pool: asyncpg.Pool) -> AsyncIterator[None]:
    yield
    await assert_books_balance(pool)


@pytest.fixture
async def own_pool(postgres_admin_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A database of its own, its books checked afterwards, for payouts and raw postings to the
    world: the escrow tests' conservation check (money in by top-ups, out by escrow payouts)
    must not meet them in the database the tests share."""
    async with await connect_pool(await fresh_database(postgres_admin_url), size=3) as pool:
        yield pool
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


async def test_the_world_keeps_no_balance_on_its_row(own_pool: asyncpg.Pool) -> None:
    """A posting to a world account, raw SQL's too, leaves its row's balance at 0 and records no
    ``balance_after``; a posting to an account that does not exist is refused as before."""
    (a,) = await wallets(own_pool, 1)
    world = money.world_account("EUR")
    async with own_pool.acquire() as conn:
        moved = await money.top_up(conn, a, 2, key=key(), actor="tests")
        await raw_movement(conn, [(world, -5), (a, 5)])
        assert (await money.balance(conn, a))["balance"] == 7
        assert await conn.fetchval("SELECT balance FROM ledger_accounts WHERE id = $1", world) == 0
        last = await conn.fetchrow(
            "SELECT amount, balance_after FROM postings WHERE account_id = $1"
            " ORDER BY id DESC LIMIT 1",
            world,
        )
        assert last is not None and dict(last) == {"amount": -5, "balance_after": None}
        assert {p.account_id: p.balance_after for p in moved.postings} == {a: 2, world: None}
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="no ledger account"):
            await raw_movement(conn, [("nowhere", -5), (a, 5)])
        with pytest.raises(OperatorError, match="nowhere"):
            await money.post(
                conn, {"nowhere": -1, a: 1}, currency="EUR", kind="manual", key=key(), actor="t"
            )


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


async def test_an_uncommitted_payout_holds_up_no_other_top_up_or_payout(
    own_pool: asyncpg.Pool,
) -> None:
    """While a payout to the world sits uncommitted, a top-up and another payout of its currency
    commit at once on other connections: the world account is locked by no movement."""
    stalled_source, source, target = await wallets(own_pool, 3)
    async with own_pool.acquire() as conn:
        for wallet in (stalled_source, source):
            await money.top_up(conn, wallet, 10, key=key(), actor="tests")
    world = money.world_account("EUR")
    async with (
        own_pool.acquire() as stalled,
        own_pool.acquire() as one,
        own_pool.acquire() as other,
    ):
        async with stalled.transaction():
            parked = await money.pay_out(
                stalled, stalled_source, 4, currency="EUR", kind="payout", key=key(), actor="t"
            )
            topped, paid = await asyncio.wait_for(
                asyncio.gather(
                    money.top_up(one, target, 5, key=key(), actor="tests"),
                    money.pay_out(
                        other, source, 3, currency="EUR", kind="payout", key=key(), actor="t"
                    ),
                ),
                timeout=2,
            )
            # Read in the stalled transaction: the other two are committed already.
            committed = [(await money.balance(stalled, w))["balance"] for w in (source, target)]
            assert committed == [7, 5]
        for movement in (parked, topped, paid):
            after = {p.account_id: p.balance_after for p in movement.postings}
            assert after[world] is None, movement
        assert (await money.balance(one, stalled_source))["balance"] == 6


def _migrate(url: str, action: Callable[[Config, str], None], revision: str) -> None:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = url
    action(config, revision)


async def test_migration_0012_moves_the_world_balances_off_their_rows_and_back(
    postgres_admin_url: str,
) -> None:
    """Upgrading to 0012 zeroes the world's rows and clears its postings' ``balance_after``,
    the books still balanced; downgrading recomputes both from the postings in id order, and
    postings move the world's row again."""
    url = await fresh_database(postgres_admin_url)
    await asyncio.to_thread(_migrate, url, command.downgrade, "0011")
    world = money.world_account("EUR")
    async with await connect_pool(url, size=1) as pool:
        (wallet,) = await wallets(pool, 1)
        async with pool.acquire() as conn:
            await money.top_up(conn, wallet, 100, key=key(), actor="tests")
            await money.pay_out(
                conn, wallet, 30, currency="EUR", kind="payout", key=key(), actor="tests"
            )
        await asyncio.to_thread(_migrate, url, command.upgrade, "0012")
        await assert_books_balance(pool)
        async with pool.acquire() as conn:
            await money.top_up(conn, wallet, 7, key=key(), actor="tests")
        await asyncio.to_thread(_migrate, url, command.downgrade, "0011")
        async with pool.acquire() as conn:
            await money.top_up(conn, wallet, 3, key=key(), actor="tests")
            row = await conn.fetchval("SELECT balance FROM ledger_accounts WHERE id = $1", world)
            after = await conn.fetch(
                "SELECT balance_after FROM postings WHERE account_id = $1 ORDER BY id", world
            )
        assert (row, [r["balance_after"] for r in after]) == (-80, [-100, -70, -77, -80])
        await asyncio.to_thread(_migrate, url, command.upgrade, "head")
        await assert_books_balance(pool)
