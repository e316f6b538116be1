"""Wallets API (``/v1/wallets``, ``/v1/transfers``): open wallets, top them up, move money between
them, read balances and statements. Writes go through :mod:`core.money`; every request that
moves money takes an ``Idempotency-Key`` (:mod:`api.idempotency`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from api.deps import OPERATOR_PROBLEMS, AdminOperator, Config, Pool, Read, single_valued_query
from api.idempotency import (
    IDEMPOTENCY_PROBLEMS,
    IDEMPOTENCY_WHY,
    Idempotent,
    OptionalIdempotencyKey,
    idempotent,
)
from api.problems import problems
from api.schemas import (
    LedgerTransactionOut,
    PostingOut,
    Statement,
    StatementEntry,
    TopUpIn,
    TransferIn,
    WalletIn,
    WalletOut,
)
from core import money
from core.db import Connection

__all__ = ["router"]

router = APIRouter(
    prefix="/v1",
    tags=["wallets"],
    dependencies=[Depends(single_valued_query)],
    responses=OPERATOR_PROBLEMS,
)
WalletPath = Annotated[str, Path(pattern=r"^wal_[0-9a-f]{32}$")]
_MOVING = problems(
    404,
    *IDEMPOTENCY_PROBLEMS,
    why={
        404: "No such wallet.",
        409: "Insufficient funds (type /problems/insufficient-funds), a currency mismatch or a "
        "closed wallet; or the first request with this Idempotency-Key is still running "
        "(type /problems/idempotency-key-in-use; retry).",
        422: IDEMPOTENCY_WHY[422],
    },
)


@router.post(
    "/wallets",
    response_model=WalletOut,
    status_code=201,
    responses=problems(
        404, *IDEMPOTENCY_PROBLEMS, why={404: "No such merchant.", **IDEMPOTENCY_WHY}
    ),
)
async def open_wallet(
    wallet: WalletIn,
    request: Request,
    pool: Pool,
    settings: Config,
    operator: AdminOperator,
    idempotency_key: OptionalIdempotencyKey = None,
) -> JSONResponse | WalletOut:
    """Open an empty wallet for a merchant (audited); with an ``Idempotency-Key``, at most once."""

    async def work(conn: Connection) -> tuple[int, WalletOut]:
        row = await money.open_wallet(
            conn, wallet.merchant_id, wallet.currency, actor=operator.actor
        )
        return 201, WalletOut(**dict(row), balance=0)

    if idempotency_key is None:
        async with pool.acquire() as conn:
            return (await work(conn))[1]
    return await idempotent(
        request,
        pool,
        key=idempotency_key,
        actor=operator.actor,
        params=wallet,
        retention_seconds=settings.idempotency_key_retention_seconds,
        work=work,
    )


@router.get(
    "/wallets/{wallet_id}",
    dependencies=[Read],
    response_model=WalletOut,
    responses=problems(404),
)
async def show_wallet(wallet_id: WalletPath, pool: Pool) -> WalletOut:
    """A wallet and its balance."""
    async with pool.acquire() as conn:
        return WalletOut(**dict(await money.balance(conn, wallet_id)))


@router.post(
    "/wallets/{wallet_id}/top-ups",
    response_model=LedgerTransactionOut,
    status_code=201,
    responses=_MOVING,
)
async def top_up_wallet(wallet_id: WalletPath, top_up: TopUpIn, once: Idempotent) -> JSONResponse:
    """Credit a wallet with money from outside (the world account of its currency), once per
    ``Idempotency-Key``; audited."""

    async def work(conn: Connection) -> tuple[int, LedgerTransactionOut]:
        movement = await money.top_up(
            conn, wallet_id, top_up.amount, key=_ledger_key(once.key), actor=once.actor
        )
        return 201, _movement(movement)

    return await once.run(top_up, work)


@router.post(
    "/transfers",
    response_model=LedgerTransactionOut,
    status_code=201,
    responses=_MOVING,
)
async def transfer(move: TransferIn, once: Idempotent) -> JSONResponse:
    """Move money between two wallets of one currency, once per ``Idempotency-Key``; a source
    holding less is refused (409 ``/problems/insufficient-funds``) and nothing moves."""

    async def work(conn: Connection) -> tuple[int, LedgerTransactionOut]:
        movement = await money.transfer(
            conn,
            move.from_wallet,
            move.to_wallet,
            move.amount,
            key=_ledger_key(once.key),
            actor=once.actor,
        )
        return 201, _movement(movement)

    return await once.run(move, work)


@router.get(
    "/wallets/{wallet_id}/statement",
    dependencies=[Read],
    response_model=Statement,
    responses=problems(404),
)
async def wallet_statement(
    wallet_id: WalletPath,
    pool: Pool,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(gt=0, le=1000)] = 100,
) -> Statement:
    """A wallet's postings after posting ``after``, oldest first, each with the balance it left;
    read in one snapshot with the balance."""
    async with pool.acquire() as conn:
        wallet, rows = await money.statement(conn, wallet_id, after=after, limit=limit + 1)
    entries = [
        StatementEntry(
            posting_id=row["id"],
            transaction_id=row["transaction_id"],
            idempotency_key=row["idempotency_key"],
            kind=row["kind"],
            amount=row["amount"],
            balance_after=row["balance_after"],
            counterparties=list(row["counterparties"]),
            actor=row["actor"],
            created_at=row["created_at"],
        )
        for row in rows[:limit]
    ]
    return Statement(wallet=WalletOut(**dict(wallet)), entries=entries, has_more=len(rows) > limit)


def _ledger_key(idempotency_key: str) -> str:
    # The ledger keeps its keys forever: after the api's key expires, a repeat still moves
    # money at most once.
    return f"request:{idempotency_key}"


def _movement(movement: money.Movement) -> LedgerTransactionOut:
    return LedgerTransactionOut(
        id=movement.transaction_id,
        idempotency_key=movement.idempotency_key,
        kind=movement.kind,
        currency=movement.currency,
        amount=sum(p.amount for p in movement.postings if p.amount > 0),
        postings=[PostingOut(**vars(p)) for p in movement.postings],
        actor=movement.actor,
        created_at=movement.created_at,
    )
