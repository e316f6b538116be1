"""Exchange requests API (``/v1/exchange-requests``): create one (once per ``Idempotency-Key``,
rate-limited per customer), list and show them with their audit timeline, and work them: claim,
advance, release, reassign (admin), cancel. Writes go through :mod:`core.exchange`; the
operator is the API key's :attr:`~api.auth.Operator.actor`. After each commit the request's
workflow (:mod:`core.exchange_workflow`) is started or told in the background, never in the
answer's path.

Working the desk takes the ``replay`` scope (the operators' acting scope, as acknowledging an
alert does); reading takes ``read``; reassigning takes ``admin``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from datetime import datetime
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Operator, require
from api.deps import OPERATOR_PROBLEMS, AdminOperator, Config, Pool, Read, single_valued_query
from api.idempotency import IDEMPOTENCY_PROBLEMS, IDEMPOTENCY_WHY, IdempotencyKey, idempotent
from api.problems import problem, problems
from api.ratelimit import RateLimiter
from api.schemas import MinorUnits
from core import exchange, feeds
from core.contracts import ExchangeStatus
from core.db import Connection
from core.errors import ExchangeConflict, RateLimited
from core.exchange_workflow import ExchangeWorkflows
from core.formats import EmailAddress, Identifier

__all__ = ["router"]

RATE_WINDOW_SECONDS = 60

router = APIRouter(
    prefix="/v1/exchange-requests",
    tags=["exchange requests"],
    dependencies=[Depends(single_valued_query)],
    responses=OPERATOR_PROBLEMS,
)
Worker = Annotated[Operator, Depends(require("replay"))]
RequestPath = Annotated[str, Path(pattern=r"^exr_[0-9a-f]{32}$")]
Asset = Annotated[
    str,
    Field(
        pattern=r"^[A-Z][A-Z0-9]{2,9}$",
        description="A currency or asset code: ISO 4217 (EUR) or a crypto ticker (BTC, USDT).",
        examples=["EUR"],
    ),
]
Reason = Annotated[str | None, Field(max_length=500, pattern=r"^[^\x00]*$")]
_CONFLICT = {
    409: "The request is not in a state for this change, or is assigned to someone else "
    "(type /problems/exchange-request-conflict; assignee names who holds it)."
}
_WORKING = problems(404, 409, why={404: "No such exchange request.", **_CONFLICT})


class ExchangeRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    merchant_id: Identifier = Field(description="The merchant whose customer asks.")
    customer_id: Identifier = Field(description="The merchant's customer (rate-limited per one).")
    from_amount: MinorUnits
    from_currency: Asset
    to_currency: Asset
    quote: MinorUnits | None = Field(
        None, description="The quoted amount to receive, in to_currency minor units."
    )
    customer_email: EmailAddress | None = Field(
        None,
        description="Where the customer is told about the request (received, processing,"
        " completed, failed or cancelled), by email.",
    )


class ExchangeRequestOut(BaseModel):
    id: str
    merchant_id: str
    customer_id: str
    from_amount: int = Field(description="Integer minor units of from_currency.")
    from_currency: str
    to_currency: str
    quote: int | None
    status: ExchangeStatus
    assignee: str | None = Field(description="The operator working it (an API key's actor).")
    created_by: str
    created_at: datetime
    updated_at: datetime
    version: int = Field(description="Goes up by one with every transition.")
    customer_email: str | None = None


class TransitionOut(BaseModel):
    from_state: ExchangeStatus | None = Field(description="null for the request's creation.")
    to_state: ExchangeStatus
    actor: str
    reason: str | None
    at: datetime


class ExchangeRequestDetail(ExchangeRequestOut):
    timeline: list[TransitionOut] = Field(description="Every transition, oldest first.")


class ExchangeRequestList(BaseModel):
    items: list[ExchangeRequestOut] = Field(description="Oldest first (the queue's order).")


class AdvanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: Literal["processing", "completed", "failed"]
    reason: Reason = None


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason = None


class ReassignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    assignee: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[!-~]+$")] = Field(
        description="The operator to give it to: an API key's actor, e.g. api-key:7:ops-alice."
    )
    reason: Reason = None


@router.post(
    "",
    response_model=ExchangeRequestOut,
    status_code=201,
    responses=problems(
        404,
        *IDEMPOTENCY_PROBLEMS,
        429,
        why={
            404: "No such merchant.",
            **IDEMPOTENCY_WHY,
            429: "This customer created too many requests this minute; see Retry-After.",
        },
    ),
)
async def create_exchange_request(
    body: ExchangeRequestIn,
    request: Request,
    pool: Pool,
    settings: Config,
    operator: Worker,
    idempotency_key: IdempotencyKey,
) -> JSONResponse:
    """Create an exchange request and queue it (``created → pending``, audited), once per
    ``Idempotency-Key``; each customer may create a limited number a minute."""
    limiter: RateLimiter = request.app.state.exchange_limiter
    limit = settings.exchange_rate_limit_per_minute
    customer = f"{body.merchant_id}:{body.customer_id}"
    if not await limiter.allow(customer, limit, window=RATE_WINDOW_SECONDS):
        raise RateLimited(
            f"customer {body.customer_id} of {body.merchant_id} created more than {limit}"
            " exchange requests this minute",
            retry_after=RATE_WINDOW_SECONDS - int(time.time()) % RATE_WINDOW_SECONDS,
        )

    async def work(conn: Connection) -> tuple[int, ExchangeRequestOut]:
        row = await exchange.create(conn, **body.model_dump(), actor=operator.actor)
        return 201, ExchangeRequestOut(**dict(row))

    response = await idempotent(
        request,
        pool,
        key=idempotency_key,
        actor=operator.actor,
        params=body,
        retention_seconds=settings.idempotency_key_retention_seconds,
        work=work,
    )
    if response.status_code == 201:
        # A replay retries the start too, if the first answer's start never got through.
        created = json.loads(bytes(response.body))
        row = await pool.fetchrow(
            f"SELECT {exchange.COLUMNS} FROM exchange_requests"
            " WHERE id = $1 AND workflow_started_at IS NULL",
            created["id"],
        )
        if row is not None:
            _workflows(request).created(row)
        if response.headers.get("Idempotent-Replayed") != "true":
            await _publish(request, exchange.transition_event_ids(created, created=True))
    return response


@router.get("", dependencies=[Read], response_model=ExchangeRequestList)
async def list_exchange_requests(
    pool: Pool,
    status: ExchangeStatus | None = None,
    assignee: Annotated[str | None, Query(max_length=200, pattern=r"^[!-~]+$")] = None,
    merchant_id: Annotated[str | None, Query(max_length=128, pattern=r"^[!-~]+$")] = None,
    customer_id: Annotated[str | None, Query(max_length=128, pattern=r"^[!-~]+$")] = None,
    limit: Annotated[int, Query(gt=0, le=500)] = 100,
) -> ExchangeRequestList:
    """Exchange requests matching every filter given (``status=pending`` is the desk's queue),
    oldest first."""
    async with pool.acquire() as conn:
        rows = await exchange.list_requests(
            conn,
            status=status,
            assignee=assignee,
            merchant_id=merchant_id,
            customer_id=customer_id,
            limit=limit,
        )
    return ExchangeRequestList(items=[ExchangeRequestOut(**dict(row)) for row in rows])


@router.get(
    "/{request_id}",
    dependencies=[Read],
    response_model=ExchangeRequestDetail,
    responses=problems(404, why={404: "No such exchange request."}),
)
async def show_exchange_request(request_id: RequestPath, pool: Pool) -> ExchangeRequestDetail:
    """One exchange request and its timeline: every transition with who, from, to, when, why."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        row = await exchange.show(conn, request_id)
        steps = await exchange.timeline(conn, request_id)
    return ExchangeRequestDetail(
        **dict(row), timeline=[TransitionOut(**dict(step)) for step in steps]
    )


@router.post(
    "/{request_id}/claim",
    response_model=ExchangeRequestOut,
    responses=_WORKING,
)
async def claim_exchange_request(
    request_id: RequestPath, request: Request, pool: Pool, operator: Worker
) -> ExchangeRequestOut | JSONResponse:
    """Take a pending request: of any number of simultaneous claims exactly one wins; every
    other gets a 409 naming the winner (``assignee``)."""
    async with pool.acquire() as conn:
        return await _answer(request, exchange.claim(conn, request_id, actor=_actor(operator)))


@router.post(
    "/{request_id}/advance",
    response_model=ExchangeRequestOut,
    responses=_WORKING,
)
async def advance_exchange_request(
    request_id: RequestPath, change: AdvanceIn, request: Request, pool: Pool, operator: Worker
) -> ExchangeRequestOut | JSONResponse:
    """Move a request on (``processing``, then ``completed``; or ``failed``); assignee only."""
    async with pool.acquire() as conn:
        return await _answer(
            request,
            exchange.advance(
                conn,
                request_id,
                ExchangeStatus(change.to),
                actor=_actor(operator),
                reason=change.reason,
            ),
        )


@router.post(
    "/{request_id}/release",
    response_model=ExchangeRequestOut,
    responses=_WORKING,
)
async def release_exchange_request(
    request_id: RequestPath,
    request: Request,
    pool: Pool,
    operator: Worker,
    change: ReasonIn | None = None,
) -> ExchangeRequestOut | JSONResponse:
    """Put an assigned request back in the queue; assignee only."""
    reason = change.reason if change else None
    async with pool.acquire() as conn:
        return await _answer(
            request, exchange.release(conn, request_id, actor=_actor(operator), reason=reason)
        )


@router.post(
    "/{request_id}/reassign",
    response_model=ExchangeRequestOut,
    responses=_WORKING,
)
async def reassign_exchange_request(
    request_id: RequestPath,
    change: ReassignIn,
    request: Request,
    pool: Pool,
    operator: AdminOperator,
) -> ExchangeRequestOut | JSONResponse:
    """Give a pending, assigned or processing request to another operator (admin only)."""
    async with pool.acquire() as conn:
        return await _answer(
            request,
            exchange.reassign(
                conn, request_id, change.assignee, actor=_actor(operator), reason=change.reason
            ),
        )


@router.post(
    "/{request_id}/cancel",
    response_model=ExchangeRequestOut,
    responses=_WORKING,
)
async def cancel_exchange_request(
    request_id: RequestPath,
    request: Request,
    pool: Pool,
    operator: Worker,
    change: ReasonIn | None = None,
) -> ExchangeRequestOut | JSONResponse:
    """Cancel a request nobody has started on: anyone while queued, the assignee or an admin
    once assigned."""
    reason = change.reason if change else None
    async with pool.acquire() as conn:
        return await _answer(
            request, exchange.cancel(conn, request_id, actor=_actor(operator), reason=reason)
        )


def _actor(operator: Operator) -> exchange.Actor:
    return exchange.Actor(operator.actor, admin="admin" in operator.scopes)


async def _publish(request: Request, event_ids: list[str]) -> None:
    """Send a committed transition's feed events to the gateway's watchers (desk, request)."""
    await feeds.publish_events(request.app.state.pool, request.app.state.redis, event_ids)


def _workflows(request: Request) -> ExchangeWorkflows:
    workflows: ExchangeWorkflows = request.app.state.exchange_workflows
    return workflows


async def _answer(
    request: Request, change: Awaitable[asyncpg.Record]
) -> ExchangeRequestOut | JSONResponse:
    """The changed request (its workflow told after the commit), or the conflict as a problem
    naming who holds it."""
    try:
        row = await change
        _workflows(request).changed(row)
        await _publish(request, exchange.transition_event_ids(row))
        return ExchangeRequestOut(**dict(row))
    except ExchangeConflict as error:
        return problem(
            409,
            "Conflict",
            error.detail,
            type_=error.problem_type,
            assignee=error.assignee,
            request_status=error.current_status,
        )
