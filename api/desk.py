"""The operator desk's aggregates (``GET /v1/desk/stats``): the exchange request queue by status,
volumes by currency and the average handling time over a window; and who an API key works the
desk as (``GET /v1/desk/operator``), for the desk page's "my requests".

Aggregates are what a page shows, never what a decision reads, so they come from the read pool
(the replica when ``SWITCHBOARD_DATABASE_READ_URL`` is set), as one snapshot that says how fresh
it is. Claims and every other change of a request read the primary (:mod:`core.exchange`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from api.auth import Operator
from api.deps import OPERATOR_PROBLEMS, Read, Reads, single_valued_query
from api.problems import problems
from api.schemas import FreshRead
from core.contracts import EXCHANGE_TRANSITIONS, ExchangeStatus
from core.db import Connection
from core.formats import Identifier

__all__ = ["router"]

router = APIRouter(
    prefix="/v1/desk",
    tags=["exchange requests"],
    dependencies=[Depends(single_valued_query), Read],
    responses=OPERATOR_PROBLEMS,
)


class CurrencyVolume(BaseModel):
    currency: str = Field(description="The currency requests exchange from.")
    created: int = Field(description="Requests created in the window.")
    created_amount: int = Field(description="Their from_amount, integer minor units.")
    completed: int = Field(description="Requests completed in the window.")
    completed_amount: int = Field(description="Their from_amount, integer minor units.")


class Handling(BaseModel):
    completed: int = Field(description="Requests completed in the window.")
    average_seconds: float | None = Field(
        description="Mean time from the claim that led to completion (pending → assigned) to"
        " completed; null when none completed."
    )


class DeskStats(FreshRead):
    window_start: datetime = Field(description="Volumes and handling count from this instant.")
    queue: dict[ExchangeStatus, int] = Field(description="Requests in each status, now.")
    oldest_pending_since: datetime | None = Field(
        description="When the longest-waiting pending request entered the queue."
    )
    volumes: list[CurrencyVolume] = Field(description="By currency, alphabetically.")
    handling: Handling


class DeskOperator(BaseModel):
    actor: str = Field(description="Who the API key acts as: the assignee its claims name.")
    can_work: bool = Field(
        description="The key has the replay scope: it may claim, advance and release requests."
    )
    admin: bool = Field(description="The key has the admin scope: it may reassign requests.")


@router.get("/operator", response_model=DeskOperator)
async def desk_operator(operator: Annotated[Operator, Read]) -> DeskOperator:
    """Who the calling API key works the desk as, and what it may do there."""
    return DeskOperator(
        actor=operator.actor, can_work="replay" in operator.scopes, admin="admin" in operator.scopes
    )


@router.get(
    "/stats",
    response_model=DeskStats,
    responses=problems(503, why={503: "The read replica cannot answer right now."}),
)
async def desk_stats(
    reads: Reads,
    window_hours: Annotated[
        int, Query(ge=1, le=24 * 90, description="Volumes and handling over the last hours.")
    ] = 24,
    merchant_id: Annotated[
        Identifier | None, Query(description="Only this merchant's requests.")
    ] = None,
) -> DeskStats:
    """The desk's queue, volumes and average handling time, as of one snapshot."""
    async with reads.snapshot() as (conn, fresh):
        # The snapshot's own clock: the window ends where the data does, even on a lagging
        # replica (the transaction's now() is its start).
        window_start: datetime = await conn.fetchval(
            "SELECT now() - $1::interval", timedelta(hours=window_hours)
        )
        queue = await _queue(conn, merchant_id)
        oldest = await conn.fetchval(
            "SELECT min(updated_at) FROM exchange_requests WHERE status = 'pending'"
            " AND ($1::text IS NULL OR merchant_id = $1)",
            merchant_id,
        )
        volumes = await _volumes(conn, window_start, merchant_id)
        handling = await _handling(conn, window_start, merchant_id)
    return DeskStats(
        **FreshRead.freshness_of(fresh),
        window_start=window_start,
        queue=queue,
        oldest_pending_since=oldest,
        volumes=volumes,
        handling=handling,
    )


async def _queue(conn: Connection, merchant_id: str | None) -> dict[ExchangeStatus, int]:
    rows = await conn.fetch(
        "SELECT status, count(*) AS n FROM exchange_requests"
        " WHERE ($1::text IS NULL OR merchant_id = $1) GROUP BY status",
        merchant_id,
    )
    counts = dict.fromkeys(ExchangeStatus, 0)
    counts.update({ExchangeStatus(row["status"]): row["n"] for row in rows})
    return counts


async def _volumes(
    conn: Connection, since: datetime, merchant_id: str | None
) -> list[CurrencyVolume]:
    # A final status is never left, so a completed request's updated_at is when it completed.
    rows = await conn.fetch(
        "SELECT from_currency AS currency,"
        " count(*) FILTER (WHERE created_at >= $1) AS created,"
        " coalesce(sum(from_amount) FILTER (WHERE created_at >= $1), 0) AS created_amount,"
        " count(*) FILTER (WHERE status = 'completed' AND updated_at >= $1) AS completed,"
        " coalesce(sum(from_amount) FILTER (WHERE status = 'completed' AND updated_at >= $1), 0)"
        "  AS completed_amount"
        " FROM exchange_requests"
        " WHERE (created_at >= $1 OR (status = 'completed' AND updated_at >= $1))"
        " AND ($2::text IS NULL OR merchant_id = $2)"
        " GROUP BY from_currency ORDER BY from_currency",
        since,
        merchant_id,
    )
    return [
        CurrencyVolume(
            currency=row["currency"],
            created=row["created"],
            created_amount=int(row["created_amount"]),
            completed=row["completed"],
            completed_amount=int(row["completed_amount"]),
        )
        for row in rows
    ]


async def _handling(conn: Connection, since: datetime, merchant_id: str | None) -> Handling:
    # From the last claim (a release or the SLA timeout sends a request back to pending, and
    # the next claim starts the clock again) to completion, both from the audit log.
    row = await conn.fetchrow(
        "SELECT count(*) AS completed,"
        " avg(extract(epoch FROM done.at - claimed.at))::float8 AS average_seconds"
        " FROM exchange_requests r"
        " CROSS JOIN LATERAL (SELECT at FROM audit_log WHERE entity_type = $3"
        "  AND entity_id = r.id AND to_state = 'completed' ORDER BY id DESC LIMIT 1) done"
        " CROSS JOIN LATERAL (SELECT at FROM audit_log WHERE entity_type = $3"
        "  AND entity_id = r.id AND from_state = 'pending' AND to_state = 'assigned'"
        "  ORDER BY id DESC LIMIT 1) claimed"
        " WHERE r.status = 'completed' AND r.updated_at >= $1"
        " AND ($2::text IS NULL OR r.merchant_id = $2)",
        since,
        merchant_id,
        EXCHANGE_TRANSITIONS.entity,
    )
    assert row is not None
    return Handling(completed=row["completed"], average_seconds=row["average_seconds"])
