"""Wallets and the double-entry ledger: the only code that moves money.

Every movement is one ledger transaction, unique per idempotency key, whose postings sum to zero
per currency; every account but the world (money from or to outside Switchboard) stays at or
above zero. Postgres enforces each of these too (migrations 0005 and 0012), so a bug here, or
raw SQL, cannot break them. A world account keeps no balance on its row (its ``balance`` stays 0
and its postings carry no ``balance_after``): its balance is the sum of its postings, minus what
every other account of its currency holds. Each write runs in the caller's connection, audited
with its actor, the way :mod:`core.tenancy` writes tenants. The operator API, the CLI (through
it) and, later, the escrow saga's activities move money only through :func:`post` and the
functions built on it.

Concurrency: a movement locks its accounts but the world with ``SELECT … FOR UPDATE`` in one
order (by account id), so opposite transfers queue instead of deadlocking; a deadlock or
serialization failure that still happens is retried here a few times and never reaches the
caller. Nothing locks or updates a world account's row, so the top-ups and payouts of a currency
do not queue on it: they wait only on the wallets and escrows they move, and a payout stalled
before its commit holds up no other.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from core.audit import audit
from core.db import Connection
from core.errors import (
    CurrencyMismatch,
    IdempotencyKeyReused,
    InsufficientFunds,
    OperatorError,
    WalletClosed,
)

__all__ = [
    "RETRIED",
    "RETRIES",
    "Movement",
    "Posting",
    "balance",
    "open_escrow_account",
    "open_wallet",
    "pay_out",
    "post",
    "statement",
    "top_up",
    "transfer",
    "world_account",
]

RETRIES = 5
"""Attempts of a movement that meets a deadlock or serialization failure (40P01, 40001)."""

RETRIED = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
"""Failures a movement retries (none is expected: accounts are locked in one order)."""


@dataclass(frozen=True)
class Posting:
    """One leg of a movement: ``amount`` (minor units, + credit, - debit) on one account, and
    the account's balance it left (``None`` on a world account, which keeps none)."""

    account_id: str
    amount: int
    balance_after: int | None


@dataclass(frozen=True)
class Movement:
    """A posted ledger transaction. ``replayed`` says it already existed under its key (the
    call changed nothing)."""

    transaction_id: int
    idempotency_key: str
    kind: str
    currency: str
    postings: tuple[Posting, ...]
    actor: str
    created_at: datetime
    replayed: bool


def world_account(currency: str) -> str:
    """The account money comes from on a top-up and goes to on a payout, per currency."""
    return f"world:{currency}"


async def open_wallet(
    conn: Connection, merchant_id: str, currency: str, *, actor: str
) -> asyncpg.Record:
    """Open an empty wallet of ``currency`` for a merchant that exists (404 otherwise), with its
    ledger account; audited."""
    wallet_id = f"wal_{uuid.uuid4().hex}"
    async with conn.transaction():
        try:
            row = await conn.fetchrow(
                "INSERT INTO wallets (id, merchant_id, currency, created_by)"
                " VALUES ($1, $2, $3, $4) RETURNING *",
                wallet_id,
                merchant_id,
                currency,
                actor,
            )
        except asyncpg.ForeignKeyViolationError:
            raise OperatorError(404, f"no merchant {merchant_id!r}") from None
        await conn.execute(
            "INSERT INTO ledger_accounts (id, kind, wallet_id, currency)"
            " VALUES ($1, 'wallet', $1, $2)",
            wallet_id,
            currency,
        )
        await audit(
            conn, "wallet", wallet_id, None, "open", actor=actor, reason=f"{currency} wallet"
        )
    assert row is not None
    return row


async def open_escrow_account(conn: Connection, escrow_id: str, currency: str) -> None:
    """Open the empty ledger account that holds an escrow's money (kind ``escrow``, the escrow's
    id): debits of its sources land there, and its release or refund empties it."""
    await conn.execute(
        "INSERT INTO ledger_accounts (id, kind, currency) VALUES ($1, 'escrow', $2)",
        escrow_id,
        currency,
    )


async def top_up(
    conn: Connection, wallet_id: str, amount: int, *, key: str, actor: str
) -> Movement:
    """Credit a wallet with ``amount`` from the world account of its currency, once per key."""
    currency = await _wallet_currency(conn, wallet_id)
    await _open_world_account(conn, currency)
    legs = {world_account(currency): -amount, wallet_id: amount}
    return await post(conn, legs, currency=currency, kind="top_up", key=key, actor=actor)


async def pay_out(
    conn: Connection,
    account_id: str,
    amount: int,
    *,
    currency: str,
    kind: str,
    key: str,
    actor: str,
    reason: str | None = None,
) -> Movement:
    """Move ``amount`` from an account to the world account of ``currency``: money that left
    Switchboard (e.g. paid to an external account by the payout provider), once per key."""
    await _open_world_account(conn, currency)
    legs = {account_id: -amount, world_account(currency): amount}
    return await post(conn, legs, currency=currency, kind=kind, key=key, actor=actor, reason=reason)


async def transfer(
    conn: Connection, from_wallet: str, to_wallet: str, amount: int, *, key: str, actor: str
) -> Movement:
    """Move ``amount`` from one wallet to another of the same currency, once per key; raises
    :class:`InsufficientFunds` (nothing moves) if the source holds less."""
    currency = await _wallet_currency(conn, from_wallet)
    if from_wallet == to_wallet:
        raise OperatorError(422, "a transfer needs two different wallets")
    legs = {from_wallet: -amount, to_wallet: amount}
    return await post(conn, legs, currency=currency, kind="transfer", key=key, actor=actor)


async def post(
    conn: Connection,
    legs: Mapping[str, int],
    *,
    currency: str,
    kind: str,
    key: str,
    actor: str,
    reason: str | None = None,
) -> Movement:
    """Post one balanced movement of ``currency``: ``legs`` maps account ids to signed amounts.

    Idempotent per ``key``: if a transaction with this key exists with the same legs, it is
    returned (``replayed``) and nothing moves; with other legs it raises
    :class:`IdempotencyKeyReused`. Concurrent calls with one key post once (the second waits on
    the first's unique key, then finds it). Raises :class:`InsufficientFunds`,
    :class:`CurrencyMismatch`, :class:`WalletClosed`, or a 404 :class:`OperatorError` for an
    unknown account; then nothing moves.

    Called inside a transaction, it runs in it, and the caller retries a deadlock or
    serialization failure (as :func:`api.idempotency.idempotent` does); otherwise it opens its
    own and retries itself. Contended accounts stay locked for one statement plus the commit:
    everything that needs no lock (the key, the checks, the audit entry) happens first.
    """
    if sum(legs.values()) != 0 or any(amount == 0 for amount in legs.values()) or len(legs) < 2:
        raise ValueError(f"a movement needs two or more non-zero legs summing to zero: {legs}")
    if conn.is_in_transaction():
        return await _post_once(conn, legs, currency, kind, key, actor, reason)
    for attempt in range(1, RETRIES + 1):
        try:
            async with conn.transaction():
                return await _post_once(conn, legs, currency, kind, key, actor, reason)
        except RETRIED:
            if attempt == RETRIES:
                raise
    raise AssertionError("unreachable")


# Locks the accounts but the world in id order (the CTE runs before any posting is inserted),
# then posts if every leg's account exists; the postings trigger moves each balance but the
# world's, and the balance CHECK refuses an overdraft.
_POST_LOCKED = (
    "WITH locked AS (SELECT id FROM ledger_accounts WHERE id = ANY($3::text[])"
    " AND kind <> 'world' ORDER BY id FOR UPDATE),"
    " world AS (SELECT id FROM ledger_accounts WHERE id = ANY($3::text[]) AND kind = 'world')"
    " INSERT INTO postings (transaction_id, account_id, currency, amount)"
    " SELECT $1, leg.account_id, $2, leg.amount"
    " FROM unnest($3::text[], $4::bigint[]) WITH ORDINALITY AS leg(account_id, amount, n)"
    " WHERE (SELECT count(*) FROM locked) + (SELECT count(*) FROM world)"
    " = cardinality($3::text[]) ORDER BY leg.n"
    " RETURNING account_id, amount, balance_after"
)


async def _post_once(
    conn: Connection,
    legs: Mapping[str, int],
    currency: str,
    kind: str,
    key: str,
    actor: str,
    reason: str | None,
) -> Movement:
    created = await conn.fetchrow(
        "INSERT INTO ledger_transactions (idempotency_key, kind, actor, reason)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (idempotency_key) DO NOTHING"
        " RETURNING id, created_at",
        key,
        kind,
        actor,
        reason,
    )
    if created is None:
        return await _existing(conn, key, legs, currency, kind)
    accounts = await conn.fetch(
        "SELECT a.id, a.currency, w.status FROM ledger_accounts a"
        " LEFT JOIN wallets w ON w.id = a.wallet_id WHERE a.id = ANY($1::text[])",
        list(legs),
    )
    found = {row["id"]: row for row in accounts}
    for account_id in legs:
        if account_id not in found:
            raise OperatorError(404, f"no wallet {account_id!r}")
    # The movement's shape first, the funds last: a transfer to a wallet of another currency
    # is refused as such whatever the source holds.
    for row in accounts:
        if row["currency"] != currency:
            raise CurrencyMismatch(
                f"{row['id']} holds {row['currency']}, this movement is in {currency}"
            )
    for row in accounts:
        if row["status"] == "closed":
            raise WalletClosed(f"wallet {row['id']} is closed")
    await audit(
        conn,
        "ledger_transaction",
        str(created["id"]),
        None,
        "posted",
        actor=actor,
        reason=f"{kind} {_describe(legs, currency)} (key {key})",
    )
    ordered = sorted(legs)
    try:
        rows = await conn.fetch(
            _POST_LOCKED, created["id"], currency, ordered, [legs[a] for a in ordered]
        )
    except asyncpg.CheckViolationError as error:
        if error.constraint_name != "ledger_accounts_balance_not_negative":
            raise
        debited = ", ".join(f"{-amount} from {a}" for a, amount in legs.items() if amount < 0)
        raise InsufficientFunds(f"not enough {currency} to move {debited}") from None
    if len(rows) != len(legs):
        # The guard of _POST_LOCKED: an account was gone by the time its lock was taken.
        raise OperatorError(404, f"no account among {', '.join(ordered)}")
    postings = tuple(Posting(r["account_id"], r["amount"], r["balance_after"]) for r in rows)
    return Movement(
        created["id"], key, kind, currency, postings, actor, created["created_at"], False
    )


async def _existing(
    conn: Connection, key: str, legs: Mapping[str, int], currency: str, kind: str
) -> Movement:
    rows = await conn.fetch(
        "SELECT t.id, t.kind, t.actor, t.created_at, p.account_id, p.currency, p.amount,"
        " p.balance_after FROM ledger_transactions t JOIN postings p ON p.transaction_id = t.id"
        " WHERE t.idempotency_key = $1 ORDER BY p.account_id",
        key,
    )
    posted = {row["account_id"]: row["amount"] for row in rows}
    if (
        not rows
        or posted != dict(legs)
        or rows[0]["kind"] != kind
        or rows[0]["currency"] != currency
    ):
        raise IdempotencyKeyReused(f"ledger key {key!r} already names a different movement")
    first = rows[0]
    return Movement(
        first["id"],
        key,
        kind,
        currency,
        tuple(Posting(r["account_id"], r["amount"], r["balance_after"]) for r in rows),
        first["actor"],
        first["created_at"],
        True,
    )


async def balance(conn: Connection, wallet_id: str) -> asyncpg.Record:
    """A wallet with its ``balance`` (404 if there is no such wallet)."""
    row = await conn.fetchrow(
        "SELECT w.id, w.merchant_id, w.currency, w.status, w.created_at, a.balance"
        " FROM wallets w JOIN ledger_accounts a ON a.wallet_id = w.id WHERE w.id = $1",
        wallet_id,
    )
    if row is None:
        raise OperatorError(404, f"no wallet {wallet_id!r}")
    return row


async def statement(
    conn: Connection, wallet_id: str, *, after: int = 0, limit: int = 100
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """A wallet (with its balance) and its postings after posting id ``after``, oldest first:
    each with its transaction, the balance it left and the other accounts of its transaction.

    Read in one snapshot, so the balance is the last posting's ``balance_after`` when the page
    reaches the end.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        wallet = await balance(conn, wallet_id)
        entries = await conn.fetch(
            "SELECT p.id, p.transaction_id, t.idempotency_key, t.kind, t.actor, t.created_at,"
            " p.amount, p.balance_after,"
            " array(SELECT q.account_id FROM postings q WHERE q.transaction_id = p.transaction_id"
            " AND q.account_id <> p.account_id ORDER BY q.account_id) AS counterparties"
            " FROM postings p JOIN ledger_transactions t ON t.id = p.transaction_id"
            " WHERE p.account_id = $1 AND p.id > $2 ORDER BY p.id LIMIT $3",
            wallet_id,
            after,
            limit,
        )
    return wallet, entries


async def _open_world_account(conn: Connection, currency: str) -> None:
    # Waits only while the currency's first movement, which opens it, has not committed: no
    # movement updates the row or locks it for update (a posting's foreign key key-share locks
    # it), so the conflict with the committed row never waits.
    await conn.execute(
        "INSERT INTO ledger_accounts (id, kind, currency) VALUES ($1, 'world', $2)"
        " ON CONFLICT (id) DO NOTHING",
        world_account(currency),
        currency,
    )


async def _wallet_currency(conn: Connection, wallet_id: str) -> str:
    currency: str | None = await conn.fetchval(
        "SELECT currency FROM wallets WHERE id = $1", wallet_id
    )
    if currency is None:
        raise OperatorError(404, f"no wallet {wallet_id!r}")
    return currency


def _describe(legs: Mapping[str, int], currency: str) -> str:
    debits = ", ".join(f"{account} {amount}" for account, amount in legs.items() if amount < 0)
    credits = ", ".join(f"{account} +{amount}" for account, amount in legs.items() if amount > 0)
    return f"{currency}: {debits} → {credits}"
