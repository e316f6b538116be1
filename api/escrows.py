"""Escrows API (``/v1/escrows``): create an escrow (which starts its saga), read it with its
transitions, list escrows, release or refund one. Every request that moves money takes an
``Idempotency-Key`` (:mod:`api.idempotency`); writes go through :mod:`core.escrow` and the
escrow's workflow.

Creating, releasing and refunding wait up to ``SWITCHBOARD_ESCROW_WAIT_SECONDS`` for the outcome:
in time, the answer is the escrow in its outcome (``201`` created, ``200`` released or
refunded); otherwise ``202`` with the escrow's URL in ``Location``, never a 5xx for a slow
engine. An escrow created while Temporal is unreachable is answered ``202`` at once, and its saga
is started by the worker's relay once Temporal is back (:mod:`core.workflow_starts`); a release
or refund then is a ``503`` problem (nothing changed; retry with the same key). A repeat with
the same key runs nothing again (the first request's effect is the only one) and answers with
the same escrow as it is now, ``Idempotent-Replayed: true``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import OPERATOR_PROBLEMS, Config, Pool, Read, Temporal, single_valued_query
from api.escrow_moves import EscrowMoves
from api.idempotency import IDEMPOTENCY_PROBLEMS, IDEMPOTENCY_WHY, Idempotent
from api.problems import problems
from api.schemas import (
    AccountBeneficiary,
    Beneficiary,
    EscrowIn,
    EscrowList,
    EscrowOut,
    EscrowRequestIn,
    EscrowSourceOut,
    EscrowTransition,
    WalletBeneficiary,
)
from core import escrow
from core.contracts import (
    ESCROW_REFUSED,
    EscrowRequest,
    EscrowSource,
    EscrowStatus,
    escrow_workflow_id,
)
from core.db import Connection
from core.errors import EscrowConflict, WorkflowEngineUnavailable
from core.escrow_workflow import ESCROWS
from core.settings import Settings
from core.workflow_starts import start_and_mark, unstarted

__all__ = ["router"]

log = logging.getLogger("switchboard.api.escrows")

router = APIRouter(
    prefix="/v1",
    tags=["escrows"],
    dependencies=[Depends(single_valued_query)],
    responses=OPERATOR_PROBLEMS,
)
EscrowPath = Annotated[str, Path(pattern=r"^esc_[0-9a-f]{32}$")]

_FUNDING = (EscrowStatus.CREATED, EscrowStatus.FUNDING)
_HELD = (EscrowStatus.FUNDED, EscrowStatus.RELEASE_FAILED)
_UNDER_WAY = (EscrowStatus.RELEASING, EscrowStatus.REFUNDING)
ENGINE_TIMEOUT_SECONDS = 5.0
"""Bounds a release's or refund's hand-over to the workflow, the SDK's retries included."""


def _escrow_moves(request: Request) -> EscrowMoves:
    moves: EscrowMoves = request.app.state.escrow_moves
    return moves


class _Accepted(BaseModel):
    """What a key stores: the escrow the request created or changed (its effect)."""

    id: str


@router.post(
    "/escrows",
    response_model=EscrowOut,
    status_code=201,
    responses={
        202: {"model": EscrowOut, "description": "Still funding; follow Location."},
        **problems(
            404,
            *IDEMPOTENCY_PROBLEMS,
            why={404: "No such merchant or wallet.", **IDEMPOTENCY_WHY},
        ),
    },
)
async def create_escrow(
    body: EscrowIn,
    once: Idempotent,
    pool: Pool,
    settings: Config,
    temporal: Temporal,
    moves: Annotated[EscrowMoves, Depends(_escrow_moves)],
) -> JSONResponse:
    """Create an escrow funded from the merchant's wallets and start its saga; answers with the
    funding outcome (``funded`` or ``failed``) if it comes in time, else 202."""

    async def work(conn: Connection) -> tuple[int, _Accepted]:
        created = await escrow.create(
            conn,
            merchant_id=body.merchant_id,
            currency=body.currency,
            sources=[EscrowSource(s.wallet_id, s.amount) for s in body.sources],
            beneficiary_wallet=_wallet_of(body.beneficiary),
            beneficiary_account=_account_of(body.beneficiary),
            reference=body.reference,
            expires_at=body.expires_at,
            actor=once.actor,
        )
        return 202, _Accepted(id=created.row["id"])

    answer = await once.run(body, work)
    if answer.status_code != 202:
        return answer
    escrow_id = json.loads(bytes(answer.body))["id"]
    # Started after the row committed (a replay retries a start not marked yet); a start that
    # cannot get through is the relay's to make, and the caller need not wait for it.
    row = await unstarted(pool, ESCROWS, escrow_id)
    if row is not None and not await start_and_mark(temporal, pool, settings, ESCROWS, row):
        return await _answer(pool, escrow_id, answer, done=201, pending=_FUNDING)
    # The outcome is waited for in Postgres: asking the workflow would cost it a task.
    await moves.wait(pool, escrow_id, _FUNDING, settings.escrow_wait_seconds)
    return await _answer(pool, escrow_id, answer, done=201, pending=_FUNDING)


@router.get(
    "/escrows/{escrow_id}",
    dependencies=[Read],
    response_model=EscrowOut,
    responses=problems(404),
)
async def show_escrow(escrow_id: EscrowPath, pool: Pool) -> EscrowOut:
    """An escrow with its sources (debited, returned) and its transitions."""
    async with pool.acquire() as conn:
        return await _escrow(conn, escrow_id)


@router.get("/escrows", dependencies=[Read], response_model=EscrowList)
async def list_escrows(
    pool: Pool,
    merchant_id: str | None = None,
    status: EscrowStatus | None = None,
    limit: Annotated[int, Query(gt=0, le=1000)] = 100,
) -> EscrowList:
    """Escrows, newest first, filtered by merchant and status."""
    async with pool.acquire() as conn:
        rows = await escrow.list_escrows(conn, merchant_id=merchant_id, status=status, limit=limit)
    return EscrowList(escrows=[_summary(row, [], []) for row in rows])


_CHANGE = problems(
    404,
    *IDEMPOTENCY_PROBLEMS,
    503,
    why={
        503: "The workflow engine cannot be reached (type /problems/workflow-engine-unavailable):"
        " nothing changed; retry with the same Idempotency-Key after Retry-After.",
        404: "No such escrow.",
        409: "The escrow is not funded (or held in release_failed): still funding, failed, "
        "released, refunded, or another release or refund under way (type "
        "/problems/escrow-conflict); or the first request with this Idempotency-Key is still "
        "running (type /problems/idempotency-key-in-use; retry).",
        422: IDEMPOTENCY_WHY[422],
    },
)


@router.post(
    "/escrows/{escrow_id}/release",
    response_model=EscrowOut,
    responses={202: {"model": EscrowOut, "description": "Releasing; follow Location."}, **_CHANGE},
)
async def release_escrow(
    escrow_id: EscrowPath,
    body: EscrowRequestIn,
    once: Idempotent,
    pool: Pool,
    settings: Config,
    temporal: Temporal,
) -> JSONResponse:
    """Release a funded escrow to its beneficiary (an external account is paid through the
    provider first); answers ``released``, or ``release_failed`` if the provider refused."""
    return await _change("release", escrow_id, body, once, pool, settings, temporal)


@router.post(
    "/escrows/{escrow_id}/refund",
    response_model=EscrowOut,
    responses={202: {"model": EscrowOut, "description": "Refunding; follow Location."}, **_CHANGE},
)
async def refund_escrow(
    escrow_id: EscrowPath,
    body: EscrowRequestIn,
    once: Idempotent,
    pool: Pool,
    settings: Config,
    temporal: Temporal,
) -> JSONResponse:
    """Return a funded (or release_failed) escrow to its sources."""
    return await _change("refund", escrow_id, body, once, pool, settings, temporal)


async def _change(
    action: Literal["release", "refund"],
    escrow_id: str,
    body: EscrowRequestIn,
    once: Idempotent,
    pool: asyncpg.Pool,
    settings: Settings,
    temporal: Client,
) -> JSONResponse:
    update_id = f"{action}:{once.key}"
    request = EscrowRequest(actor=once.actor, reason=body.reason)

    async def work(conn: Connection) -> tuple[int, _Accepted]:
        row = await escrow.show(conn, escrow_id)
        if row["status"] not in _HELD:
            raise EscrowConflict(f"escrow {escrow_id} is {row['status']}: it cannot be {action}ed")
        return 202, _Accepted(id=escrow_id)

    answer = await once.run(body, work)
    if answer.status_code != 202:
        return answer
    # Handed over once the key's answer is stored (no database connection waits on Temporal),
    # and again by every repeat of the key: the update id makes it one update.
    await _hand_over(temporal, escrow_id, action, request, update_id)
    await _wait(temporal, escrow_id, action, update_id, settings.escrow_wait_seconds)
    return await _answer(pool, escrow_id, answer, done=200, pending=_UNDER_WAY)


async def _hand_over(
    temporal: Client,
    escrow_id: str,
    action: Literal["release", "refund"],
    request: EscrowRequest,
    update_id: str,
) -> None:
    """Give the order to the escrow's workflow (accepted, or refused by its validator: 409).

    The update id comes from the key: Temporal runs one update per id, so a repeat attaches to
    the first, and a request that was never accepted meets the validator again. An engine that
    cannot be reached is a 503: the same key hands it over again.
    """
    handle = temporal.get_workflow_handle(escrow_workflow_id(escrow_id))
    try:
        async with asyncio.timeout(ENGINE_TIMEOUT_SECONDS):
            await handle.start_update(
                action, request, id=update_id, wait_for_stage=WorkflowUpdateStage.ACCEPTED
            )
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.type == ESCROW_REFUSED:
            raise EscrowConflict(cause.message) from None
        raise
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            if await _was_taken(handle, update_id):
                return
            raise EscrowConflict(f"escrow {escrow_id} has ended: it cannot be {action}ed") from None
        raise _unreachable(error) from None
    except (RuntimeError, TimeoutError, RPCTimeoutOrCancelledError) as error:
        raise _unreachable(error) from None


async def _was_taken(handle: WorkflowHandle[Any, Any], update_id: str) -> bool:
    """Whether the (now ended) workflow ran the update ``update_id`` to a successful outcome."""
    try:
        async with asyncio.timeout(ENGINE_TIMEOUT_SECONDS):
            await handle.get_update_handle(update_id).result()
    except (
        WorkflowUpdateFailedError,
        RPCError,
        RuntimeError,
        TimeoutError,
        RPCTimeoutOrCancelledError,
    ):
        return False
    return True


def _unreachable(error: Exception) -> WorkflowEngineUnavailable:
    # A lazy client that never reached the server raises RuntimeError("Failed client connect").
    log.warning("the escrow's workflow cannot be reached: %r", error)
    return WorkflowEngineUnavailable(
        "the workflow engine cannot be reached right now: retry with the same Idempotency-Key"
    )


async def _wait(
    temporal: Client, escrow_id: str, update: str, update_id: str, seconds: float
) -> None:
    """Wait up to ``seconds`` for the workflow's answer to ``update``; Postgres says the rest.

    Requests accepted in one workflow task all passed the validator; the escrow refuses all but
    the first as they run, and that refusal is a 409 here (and for every repeat of it). The
    server may then no longer know the refused update at all (NOT_FOUND): refused too.
    """
    handle = temporal.get_workflow_handle(escrow_workflow_id(escrow_id))
    try:
        async with asyncio.timeout(seconds):
            await handle.get_update_handle(update_id).result()
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.type == ESCROW_REFUSED:
            raise EscrowConflict(cause.message) from None
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise EscrowConflict(f"escrow {escrow_id} refused this {update}") from None
        log.warning("escrow %s: no answer to %s yet: %s", escrow_id, update, error)
    except RuntimeError as error:  # the engine unreachable before the client ever connected
        log.warning("escrow %s: no answer to %s yet: %r", escrow_id, update, error)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        # The SDK turns the deadline's cancellation of its update call into its own error.
        pass


async def _answer(
    pool: asyncpg.Pool,
    escrow_id: str,
    answer: JSONResponse,
    *,
    done: int,
    pending: tuple[EscrowStatus, ...],
) -> JSONResponse:
    async with pool.acquire() as conn:
        view = await _escrow(conn, escrow_id)
    still = view.status in pending
    headers = {"Location": f"/v1/escrows/{escrow_id}"}
    if replayed := answer.headers.get("Idempotent-Replayed"):
        headers["Idempotent-Replayed"] = replayed
    return JSONResponse(
        view.model_dump(mode="json"), status_code=202 if still else done, headers=headers
    )


async def _escrow(conn: Connection, escrow_id: str) -> EscrowOut:
    row = await escrow.show(conn, escrow_id)
    sources = [EscrowSourceOut(**vars(s)) for s in await escrow.sources(conn, escrow_id)]
    transitions = [
        EscrowTransition(
            from_status=t["from_state"],
            to_status=t["to_state"],
            actor=t["actor"],
            reason=t["reason"],
            at=t["at"],
            event_id=t["event_id"],
        )
        for t in await escrow.timeline(conn, escrow_id)
    ]
    return _summary(row, sources, transitions)


def _summary(
    row: asyncpg.Record, sources: list[EscrowSourceOut], transitions: list[EscrowTransition]
) -> EscrowOut:
    return EscrowOut(
        id=row["id"],
        merchant_id=row["merchant_id"],
        currency=row["currency"],
        amount=row["amount"],
        sources=sources,
        beneficiary=(
            WalletBeneficiary(wallet_id=row["beneficiary_wallet"])
            if row["beneficiary_wallet"] is not None
            else AccountBeneficiary(account=row["beneficiary_account"])
        ),
        reference=row["reference"],
        expires_at=row["expires_at"],
        status=row["status"],
        payout_transfer_id=row["payout_transfer_id"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        transitions=transitions,
    )


def _wallet_of(beneficiary: Beneficiary) -> str | None:
    return beneficiary.wallet_id if isinstance(beneficiary, WalletBeneficiary) else None


def _account_of(beneficiary: Beneficiary) -> str | None:
    return beneficiary.account if isinstance(beneficiary, AccountBeneficiary) else None
