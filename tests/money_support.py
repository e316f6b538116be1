"""Checks shared by the money tests: the books balance (Jepsen's bank checker, against the
ledger's own tables), and a fresh merchant to own wallets."""

from __future__ import annotations

import uuid

import asyncpg

from core.tenancy import create_merchant


async def new_merchant(pool: asyncpg.Pool) -> str:
    """A merchant of its own, so tests never share wallets."""
    merchant_id = f"m-money-{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as conn:
        await create_merchant(
            conn, merchant_id, name=None, email=None, partner_ids=[], actor="tests"
        )
    return merchant_id


async def assert_books_balance(pool: asyncpg.Pool) -> None:
    """Money is conserved and every figure reconciles: each currency's postings sum to zero, and
    so does every transaction's; each balance but the world's is the sum of its account's
    postings and its last posting's ``balance_after``; a world account keeps a balance of 0 and
    its postings no ``balance_after`` (its balance is its postings' sum); no account is
    negative; each key names one transaction."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        unbalanced_currencies = await conn.fetch(
            "SELECT currency, sum(amount) FROM postings GROUP BY currency HAVING sum(amount) <> 0"
        )
        unbalanced_transactions = await conn.fetch(
            "SELECT transaction_id FROM postings GROUP BY transaction_id, currency"
            " HAVING sum(amount) <> 0"
        )
        unreconciled = await conn.fetch(
            "SELECT a.id, a.balance, coalesce(sum(p.amount), 0) AS posted,"
            " (SELECT balance_after FROM postings l WHERE l.account_id = a.id"
            "  ORDER BY l.id DESC LIMIT 1) AS last"
            " FROM ledger_accounts a LEFT JOIN postings p ON p.account_id = a.id"
            " WHERE a.kind <> 'world'"
            " GROUP BY a.id HAVING a.balance <> coalesce(sum(p.amount), 0)"
            " OR a.balance <> coalesce((SELECT balance_after FROM postings l"
            "  WHERE l.account_id = a.id ORDER BY l.id DESC LIMIT 1), 0)"
            " OR count(p.id) <> count(p.balance_after)"
        )
        world_figures = await conn.fetch(
            "SELECT a.id, a.balance, count(p.balance_after) AS with_balance_after"
            " FROM ledger_accounts a LEFT JOIN postings p ON p.account_id = a.id"
            " WHERE a.kind = 'world' GROUP BY a.id"
            " HAVING a.balance <> 0 OR count(p.balance_after) > 0"
        )
        negative = await conn.fetch("SELECT id, balance FROM ledger_accounts WHERE balance < 0")
        keys = await conn.fetchval(
            "SELECT count(*) - count(DISTINCT idempotency_key) FROM ledger_transactions"
        )
    assert not unbalanced_currencies, unbalanced_currencies
    assert not unbalanced_transactions, unbalanced_transactions
    assert not unreconciled, unreconciled
    assert not world_figures, world_figures
    assert not negative, negative
    assert keys == 0
