"""Escrows: every write, each one Postgres transaction with its audit entry and merchant event.

An escrow moves as :data:`core.contracts.ESCROW_TRANSITIONS` draws it, and migration 0007's
trigger refuses anything else. Each transition locks the row, checks it against what it read,
writes, appends the transition to the audit log (actor, reason) and one ``escrow.{status}``
event to the owning merchant's feed (gapless ``seq``), all in one transaction; the saga then
publishes the event to Redis. Every transition names the ``version`` it moves the escrow from
(the row's counter, one per transition), so an attempt that comes again after it committed (an
activity retried, or a late duplicate after the escrow came round ``release_failed →
releasing``) finds the escrow past that version and changes nothing: the status alone would let
it apply twice.

Money moves only through :mod:`core.money`, with keys derived from business identity:
``escrow:{id}:debit:{wallet}`` into the escrow's holding account (a ledger account with the
escrow's id), ``escrow:{id}:return:{wallet}`` back to a source (compensation of a failed funding,
or a refund), ``escrow:{id}:release`` out to the beneficiary wallet or, once the provider paid an
external account, to the world account of the currency. A settlement and its transition commit
together, so an escrow is ``released`` or ``refunded`` exactly when its holding account is empty;
the move to ``failed`` returns, in its transaction, any debit still held, so ``failed`` is too.
Money moves only in its stage, checked under the escrow's row lock: a debit while ``funding``, a
return of a debit made while ``funding`` (compensation) or ``refunding``. A late attempt whose
first never committed is refused (:class:`~core.errors.EscrowMoneyRefused`) once the escrow has
moved on; one that did commit is answered with its movement, as a retry always is.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import asyncpg

from core import money
from core.audit import audit
from core.contracts import ESCROW_MOVES_CHANNEL, ESCROW_TRANSITIONS, EscrowSource, EscrowStatus
from core.db import Connection
from core.errors import CurrencyMismatch, EscrowMoneyRefused, IllegalTransition, OperatorError
from core.merchant_events import append_merchant_event

__all__ = [
    "COLUMNS",
    "CREATED_VERSION",
    "ENTITY",
    "Moved",
    "SourceState",
    "create",
    "debit_key",
    "debit_source",
    "event_id",
    "list_escrows",
    "move",
    "refund",
    "release",
    "release_key",
    "return_key",
    "return_source",
    "show",
    "sources",
    "timeline",
]

ENTITY = ESCROW_TRANSITIONS.entity
COLUMNS = (
    "id, merchant_id, currency, amount, beneficiary_wallet, beneficiary_account, reference,"
    " expires_at, status, payout_transfer_id, created_by, created_at, updated_at, version"
)
CREATED_VERSION = 1
"""An escrow's version as created (migration 0007's default); each transition adds one."""


@dataclass(frozen=True)
class Moved:
    """An escrow after a transition, and the merchant event that announced it."""

    row: asyncpg.Record
    event_id: str


@dataclass(frozen=True)
class SourceState:
    """One source of an escrow, and how far its money went."""

    wallet_id: str
    amount: int
    debited: bool
    returned: bool


def debit_key(escrow_id: str, wallet_id: str) -> str:
    """The ledger key of a source's debit into the escrow."""
    return f"escrow:{escrow_id}:debit:{wallet_id}"


def return_key(escrow_id: str, wallet_id: str) -> str:
    """The ledger key of the return of a source's debit (compensation or refund)."""
    return f"escrow:{escrow_id}:return:{wallet_id}"


def release_key(escrow_id: str) -> str:
    """The ledger key of the escrow's release (to a wallet, or out after a payout)."""
    return f"escrow:{escrow_id}:release"


def event_id(escrow_id: str, version: int) -> str:
    """The merchant event announcing the escrow's ``version`` (one per transition)."""
    return f"{escrow_id}:{version}"


async def create(
    conn: Connection,
    *,
    merchant_id: str,
    currency: str,
    sources: Sequence[EscrowSource],
    beneficiary_wallet: str | None,
    beneficiary_account: str | None,
    reference: str,
    expires_at: datetime,
    actor: str,
) -> Moved:
    """A new ``created`` escrow with its holding account and sources, audited and announced.

    The sources are distinct wallets of the merchant in ``currency``; a beneficiary wallet holds
    ``currency`` and is none of them (404 for a merchant, or a wallet of it, that does not exist;
    409 ``currency-mismatch`` for a wallet of another currency; 422 for the rest, an expiry
    that is not in the future included). Nothing moves yet: the saga debits the sources.
    """
    if (beneficiary_wallet is None) == (beneficiary_account is None):
        raise OperatorError(422, "an escrow has one beneficiary: a wallet or an external account")
    wallets = [source.wallet_id for source in sources]
    if not wallets or len(set(wallets)) != len(wallets):
        raise OperatorError(422, "an escrow needs one or more sources, each wallet once")
    if beneficiary_wallet in wallets:
        raise OperatorError(422, "the beneficiary wallet cannot also fund the escrow")
    if not await conn.fetchval("SELECT true FROM merchants WHERE id = $1", merchant_id):
        raise OperatorError(404, f"no merchant {merchant_id!r}")
    named = wallets + ([beneficiary_wallet] if beneficiary_wallet else [])
    found = {
        row["id"]: row
        for row in await conn.fetch(
            "SELECT id, merchant_id, currency FROM wallets WHERE id = ANY($1::text[])", named
        )
    }
    for wallet_id in named:
        if wallet_id not in found:
            raise OperatorError(404, f"no wallet {wallet_id!r}")
        if found[wallet_id]["currency"] != currency:
            raise CurrencyMismatch(
                f"wallet {wallet_id} holds {found[wallet_id]['currency']}, not {currency}"
            )
    for wallet_id in wallets:
        if found[wallet_id]["merchant_id"] != merchant_id:
            # As if it did not exist: one merchant's escrow does not learn of another's wallets.
            raise OperatorError(404, f"no wallet {wallet_id!r} of merchant {merchant_id!r}")
    if expires_at <= datetime.now(UTC):
        # It would be funded only to be refunded at once: a mistake, not an escrow anyone wants.
        raise OperatorError(422, f"expires_at {expires_at.isoformat()} is not in the future")
    escrow_id = f"esc_{uuid.uuid4().hex}"
    amount = sum(source.amount for source in sources)
    async with conn.transaction():
        await money.open_escrow_account(conn, escrow_id, currency)
        row = await conn.fetchrow(
            "INSERT INTO escrows (id, merchant_id, currency, amount, beneficiary_wallet,"
            " beneficiary_account, reference, expires_at, status, created_by)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {COLUMNS}",
            escrow_id,
            merchant_id,
            currency,
            amount,
            beneficiary_wallet,
            beneficiary_account,
            reference,
            expires_at,
            ESCROW_TRANSITIONS.initial,
            actor,
        )
        assert row is not None
        await conn.executemany(
            "INSERT INTO escrow_sources (escrow_id, wallet_id, currency, amount)"
            " VALUES ($1, $2, $3, $4)",
            [(escrow_id, s.wallet_id, currency, s.amount) for s in sources],
        )
        announced = await _announce(conn, row, None, actor=actor, reason=reference)
    return Moved(row, announced)


async def move(
    conn: Connection,
    escrow_id: str,
    old: EscrowStatus,
    new: EscrowStatus,
    *,
    version: int,
    actor: str,
    reason: str | None,
    transfer_id: str | None = None,
) -> Moved:
    """Move the escrow from ``old`` at ``version`` to ``new`` (audited, announced) in the
    caller's transaction or its own. Past ``version`` already (this move committed before):
    nothing changes and the event that announced it is returned, with the escrow as it is now.
    Anything else: :class:`IllegalTransition`. The move to ``failed`` first returns any debit
    still held (see :func:`_return_held_debits`)."""
    ESCROW_TRANSITIONS.check(old, new)
    async with conn.transaction():
        row = await _locked(conn, escrow_id, "UPDATE")
        done = await _moved_before(conn, row, version, new)
        if done is not None:
            return done
        if row["status"] != old or row["version"] != version:
            raise IllegalTransition(
                f"escrow {escrow_id} is {row['status']} at version {row['version']}, not {old}"
                f" at version {version}: it cannot go to {new}"
            )
        if new == EscrowStatus.FAILED:
            await _return_held_debits(conn, row, actor=actor)
        # The NOTIFY goes out when the transition commits (api.escrow_moves listens).
        moved = await conn.fetchrow(
            "UPDATE escrows SET status = $2, version = version + 1, updated_at = clock_timestamp(),"
            f" payout_transfer_id = coalesce($3, payout_transfer_id) WHERE id = $1"
            f" RETURNING {COLUMNS}, pg_notify($4, id)::text AS notified",
            escrow_id,
            new,
            transfer_id,
            ESCROW_MOVES_CHANNEL,
        )
        assert moved is not None
        announced = await _announce(conn, moved, old, actor=actor, reason=reason)
    return Moved(moved, announced)


async def debit_source(
    conn: Connection, escrow_id: str, wallet_id: str, amount: int, currency: str, *, actor: str
) -> money.Movement:
    """Debit one source into the escrow's holding account, once per (escrow, wallet), while the
    escrow is ``funding``; raises :class:`~core.errors.InsufficientFunds` or
    :class:`~core.errors.WalletClosed` (nothing moves) when it never can, and
    :class:`~core.errors.EscrowMoneyRefused` once the escrow has left ``funding`` without it.

    The escrow's row stays share-locked until the debit commits, so a transition out of
    ``funding`` (which takes it for update) comes wholly before or after the debit: a stale
    attempt cannot slip money into an escrow that has ``failed``. A deadlock is retried by the
    saga's step (none is expected: the row, then the accounts in id order)."""
    key = debit_key(escrow_id, wallet_id)
    async with conn.transaction():
        await _in_stage(conn, escrow_id, key, (EscrowStatus.FUNDING,), "debit")
        return await money.post(
            conn,
            {wallet_id: -amount, escrow_id: amount},
            currency=currency,
            kind="escrow_debit",
            key=key,
            actor=actor,
            reason=f"fund escrow {escrow_id}",
        )


async def return_source(
    conn: Connection, escrow_id: str, wallet_id: str, amount: int, currency: str, *, actor: str
) -> money.Movement:
    """Give one source back what its debit took, once per (escrow, wallet): while the escrow is
    ``funding`` (compensation) or ``refunding``, and only a debit that was made (a return of
    one never made would hand out another source's money); otherwise
    :class:`~core.errors.EscrowMoneyRefused`."""
    key = return_key(escrow_id, wallet_id)
    async with conn.transaction():
        await _in_stage(
            conn,
            escrow_id,
            key,
            (EscrowStatus.FUNDING, EscrowStatus.REFUNDING),
            "return",
            after=debit_key(escrow_id, wallet_id),
        )
        return await money.post(
            conn,
            {escrow_id: -amount, wallet_id: amount},
            currency=currency,
            kind="escrow_return",
            key=key,
            actor=actor,
            reason=f"return from escrow {escrow_id}",
        )


async def release(
    conn: Connection,
    escrow_id: str,
    *,
    version: int,
    actor: str,
    reason: str | None,
    transfer_id: str | None,
) -> Moved:
    """Empty the holding account to the beneficiary and move ``releasing`` (at ``version``) to
    ``released``, in one transaction. To a beneficiary wallet, a ledger transfer; to an external
    account, the money leaves for the world account once ``transfer_id`` (the provider's
    confirmed transfer) is known. Raises :class:`~core.errors.WalletClosed` for a closed
    beneficiary wallet; a stale attempt (another release round, or after a refund) moves
    nothing (:func:`move` answers it)."""
    async with conn.transaction():
        row = await _locked(conn, escrow_id, "UPDATE")
        if row["status"] == EscrowStatus.RELEASING and row["version"] == version:
            if row["beneficiary_wallet"] is not None:
                await money.post(
                    conn,
                    {escrow_id: -row["amount"], row["beneficiary_wallet"]: row["amount"]},
                    currency=row["currency"],
                    kind="escrow_release",
                    key=release_key(escrow_id),
                    actor=actor,
                    reason=reason,
                )
            else:
                if transfer_id is None:
                    raise ValueError("a release to an external account needs its transfer")
                await money.pay_out(
                    conn,
                    escrow_id,
                    row["amount"],
                    currency=row["currency"],
                    kind="escrow_payout",
                    key=release_key(escrow_id),
                    actor=actor,
                    reason=f"payout {transfer_id} to {row['beneficiary_account']}",
                )
        return await move(
            conn,
            escrow_id,
            EscrowStatus.RELEASING,
            EscrowStatus.RELEASED,
            version=version,
            actor=actor,
            reason=reason,
            transfer_id=transfer_id,
        )


async def refund(
    conn: Connection, escrow_id: str, *, version: int, actor: str, reason: str | None
) -> Moved:
    """Return every source's debit and move ``refunding`` (at ``version``) to ``refunded``, in
    one transaction; a stale attempt moves nothing (:func:`move` answers it)."""
    async with conn.transaction():
        row = await _locked(conn, escrow_id, "UPDATE")
        if row["status"] == EscrowStatus.REFUNDING and row["version"] == version:
            for source in await conn.fetch(
                "SELECT wallet_id, amount FROM escrow_sources WHERE escrow_id = $1", escrow_id
            ):
                await return_source(
                    conn,
                    escrow_id,
                    source["wallet_id"],
                    source["amount"],
                    row["currency"],
                    actor=actor,
                )
        return await move(
            conn,
            escrow_id,
            EscrowStatus.REFUNDING,
            EscrowStatus.REFUNDED,
            version=version,
            actor=actor,
            reason=reason,
        )


async def show(conn: Connection, escrow_id: str) -> asyncpg.Record:
    """One escrow; 404 if there is none."""
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM escrows WHERE id = $1", escrow_id)
    if row is None:
        raise OperatorError(404, f"no escrow {escrow_id!r}")
    return row


async def sources(conn: Connection, escrow_id: str) -> list[SourceState]:
    """An escrow's sources in wallet order, with whether each one's debit and return were
    posted (read from the ledger by their keys)."""
    rows = await conn.fetch(
        "SELECT wallet_id, amount FROM escrow_sources WHERE escrow_id = $1 ORDER BY wallet_id",
        escrow_id,
    )
    keys = [debit_key(escrow_id, r["wallet_id"]) for r in rows]
    keys += [return_key(escrow_id, r["wallet_id"]) for r in rows]
    posted = {
        key
        for (key,) in await conn.fetch(
            "SELECT idempotency_key FROM ledger_transactions WHERE idempotency_key = ANY($1)", keys
        )
    }
    return [
        SourceState(
            r["wallet_id"],
            r["amount"],
            debited=debit_key(escrow_id, r["wallet_id"]) in posted,
            returned=return_key(escrow_id, r["wallet_id"]) in posted,
        )
        for r in rows
    ]


async def timeline(conn: Connection, escrow_id: str) -> list[asyncpg.Record]:
    """An escrow's transitions, oldest first: who, from, to, when, why, and its event."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT from_state, to_state, actor, reason, at, event_id FROM audit_log"
        " WHERE entity_type = $1 AND entity_id = $2 ORDER BY id",
        ENTITY,
        escrow_id,
    )
    return rows


async def list_escrows(
    conn: Connection,
    *,
    merchant_id: str | None = None,
    status: EscrowStatus | None = None,
    limit: int = 100,
) -> list[asyncpg.Record]:
    """Escrows matching every filter given, newest first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {COLUMNS} FROM escrows"
        " WHERE ($1::text IS NULL OR merchant_id = $1) AND ($2::text IS NULL OR status = $2)"
        " ORDER BY created_at DESC, id LIMIT $3",
        merchant_id,
        status,
        limit,
    )
    return rows


async def _announce(
    conn: Connection, row: asyncpg.Record, old: str | None, *, actor: str, reason: str | None
) -> str:
    """Audit the escrow's transition to its current status and append its merchant event."""
    announced = event_id(row["id"], row["version"])
    await audit(
        conn, ENTITY, row["id"], old, row["status"], actor=actor, reason=reason, event_id=announced
    )
    await append_merchant_event(
        conn,
        row["merchant_id"],
        announced,
        f"escrow.{row['status']}",
        {
            "escrow_id": row["id"],
            "status": row["status"],
            "from_status": old,
            "amount": row["amount"],
            "currency": row["currency"],
            "reference": row["reference"],
            "actor": actor,
            "reason": reason,
        },
    )
    return announced


async def _locked(
    conn: Connection, escrow_id: str, mode: Literal["UPDATE", "SHARE"]
) -> asyncpg.Record:
    """The escrow's row, locked ``FOR {mode}`` until the transaction ends; 404 if there is none."""
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM escrows WHERE id = $1 FOR {mode}", escrow_id)
    if row is None:
        raise OperatorError(404, f"no escrow {escrow_id!r}")
    return row


async def _moved_before(
    conn: Connection, row: asyncpg.Record, version: int, new: EscrowStatus
) -> Moved | None:
    """The move from ``version`` to ``new`` if it already committed (the escrow is past
    ``version`` and its next transition went to ``new``); None if the escrow is not past it.
    Past it by another transition: :class:`IllegalTransition`."""
    if row["version"] <= version:
        return None
    announced = event_id(row["id"], version + 1)
    went_to = await conn.fetchval(
        "SELECT to_state FROM audit_log WHERE event_id = $1 AND entity_type = $2",
        announced,
        ENTITY,
    )
    if went_to != new:
        raise IllegalTransition(
            f"escrow {row['id']} went from version {version} to {went_to}, not {new}"
        )
    return Moved(row, announced)


async def _in_stage(
    conn: Connection,
    escrow_id: str,
    key: str,
    stages: tuple[EscrowStatus, ...],
    what: str,
    *,
    after: str | None = None,
) -> None:
    """Share-lock the escrow and refuse a movement under ``key`` unless it is in one of
    ``stages`` (and the movement ``after`` was posted) or the movement was posted already (a
    retry, which :func:`core.money.post` answers with it)."""
    row = await conn.fetchrow(
        "SELECT e.status, EXISTS (SELECT 1 FROM ledger_transactions WHERE idempotency_key = $2)"
        " AS posted, $3::text IS NULL OR EXISTS (SELECT 1 FROM ledger_transactions"
        " WHERE idempotency_key = $3) AS after_posted"
        " FROM escrows e WHERE e.id = $1 FOR SHARE",
        escrow_id,
        key,
        after,
    )
    if row is None:
        raise OperatorError(404, f"no escrow {escrow_id!r}")
    if row["posted"]:
        return
    if row["status"] not in stages:
        raise EscrowMoneyRefused(f"escrow {escrow_id} is {row['status']}: no {what} ({key}) now")
    if not row["after_posted"]:
        raise EscrowMoneyRefused(f"escrow {escrow_id} has no {after} to {what}")


async def _return_held_debits(conn: Connection, row: asyncpg.Record, *, actor: str) -> None:
    """Return every debit still in a ``funding`` escrow that is failing: the saga returned the
    debits it made, and this catches one that committed without it knowing (a stale attempt
    before the row lock), so ``failed`` always means every debit returned."""
    for source in await sources(conn, row["id"]):
        if source.debited and not source.returned:
            await return_source(
                conn, row["id"], source.wallet_id, source.amount, row["currency"], actor=actor
            )
