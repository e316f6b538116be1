"""Operator API for outbound deliveries (``/v1``): merchant endpoints, their secrets and health,
deliveries with their attempt logs, and replays of dead-lettered deliveries.

Changes here are durable requests the worker picks up, never Temporal calls: resuming an
endpoint or replaying a delivery updates rows and NOTIFYs the delivery relay, so both work,
and are audited, even while Temporal is down.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Query

from api.deps import OPERATOR_PROBLEMS, Admin, Config, Pool, Read, Replay, single_valued_query
from api.problems import problems
from api.schemas import (
    DeliveryAttemptOut,
    DeliveryOut,
    DeliveryReplayFilter,
    EndpointCreated,
    EndpointIn,
    EndpointOut,
    EndpointPatch,
    EndpointSecretRotated,
    IsoDateTime,
    ReplayResult,
)
from api.secrets import rotate_owned_secret
from core.audit import audit
from core.contracts import DELIVERY_TRANSITIONS, DeliveryStatus
from core.db import Connection
from core.egress import check_destination_url, parse_allow_list
from core.errors import DestinationRefused, OperatorError
from core.outbox import wake_delivery_relay
from core.settings import Settings

__all__ = ["MAX_LIVE_SECRETS", "router"]

# Every live secret signs each delivery; Svix allows 10 at once too.
MAX_LIVE_SECRETS = 10
# The API spells the statuses out (its OpenAPI schema); a test keeps them equal to the enum.
DeliveryStatusParam = Literal["pending", "succeeded", "dead_lettered", "cancelled"]

router = APIRouter(
    prefix="/v1",
    tags=["deliveries"],
    dependencies=[Depends(single_valued_query)],
    responses=OPERATOR_PROBLEMS,
)

_ENDPOINT = """
SELECT ep.*, coalesce((SELECT jsonb_object_agg(status, n) FROM (SELECT status, count(*) AS n
    FROM deliveries WHERE endpoint_id = ep.id GROUP BY status) AS counts), '{}') AS deliveries
FROM endpoints ep
"""
_ATTEMPT_COLUMNS = (
    "delivery_id, endpoint_id, attempt, cycle, scheduled_at, started_at, latency_ms, outcome,"
    " status_code, error, encode(response_sha256, 'hex') AS response_sha256, response_head"
)


def _endpoint(row: asyncpg.Record) -> EndpointOut:
    return EndpointOut(**{key: row[key] for key in EndpointOut.model_fields})


def _vet_url(url: str, settings: Settings) -> None:
    try:
        check_destination_url(url, allow=parse_allow_list(settings.delivery_allow_networks))
    except DestinationRefused as error:
        raise OperatorError(
            422, f"endpoint URL refused ({error.reason}): {error.detail}"
        ) from error


async def _get_endpoint(conn: Connection | asyncpg.Pool, endpoint_id: str) -> asyncpg.Record:
    row = await conn.fetchrow(f"{_ENDPOINT} WHERE ep.id = $1", endpoint_id)
    if row is None or row["status"] == "deleted":
        raise OperatorError(404, f"no endpoint {endpoint_id!r}")
    return row


@router.post("/endpoints", dependencies=[Admin], response_model=EndpointCreated, status_code=201)
async def add_endpoint(endpoint: EndpointIn, pool: Pool, settings: Config) -> EndpointCreated:
    """Register a merchant endpoint; the answer carries its signing secret, shown once."""
    _vet_url(endpoint.url, settings)
    endpoint_id = f"ep_{secrets.token_hex(10)}"
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO merchants (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
            endpoint.merchant_id,
        )
        await conn.execute(
            "INSERT INTO endpoints (id, merchant_id, url, description, event_types)"
            " VALUES ($1, $2, $3, $4, $5)",
            endpoint_id,
            endpoint.merchant_id,
            endpoint.url,
            endpoint.description,
            endpoint.event_types,
        )
        secret, _ = await rotate_owned_secret(
            conn, "endpoint_secrets", endpoint_id, overlap_seconds=0
        )
        await audit(
            conn,
            "endpoint",
            endpoint_id,
            None,
            "active",
            actor="operator",
            reason=f"registered {endpoint.url}",
        )
        row = await _get_endpoint(conn, endpoint_id)
    return EndpointCreated(**_endpoint(row).model_dump(), secret=secret)


@router.get("/endpoints", dependencies=[Read], response_model=list[EndpointOut])
async def list_endpoints(
    pool: Pool,
    merchant_id: str | None = None,
    limit: Annotated[int, Query(gt=0, le=1000)] = 100,
) -> list[EndpointOut]:
    """Endpoints with their health, newest first (deleted ones are left out)."""
    rows = await pool.fetch(
        f"{_ENDPOINT} WHERE ep.status <> 'deleted' AND ($1::text IS NULL OR ep.merchant_id = $1)"
        " ORDER BY ep.created_at DESC LIMIT $2",
        merchant_id,
        limit,
    )
    return [_endpoint(row) for row in rows]


@router.get(
    "/endpoints/{endpoint_id}",
    dependencies=[Read],
    response_model=EndpointOut,
    responses=problems(404),
)
async def get_endpoint(endpoint_id: str, pool: Pool) -> EndpointOut:
    """One endpoint: status, failure streak, circuit breaker and deliveries by status."""
    return _endpoint(await _get_endpoint(pool, endpoint_id))


@router.patch(
    "/endpoints/{endpoint_id}",
    dependencies=[Admin],
    response_model=EndpointOut,
    responses=problems(404),
)
async def update_endpoint(
    endpoint_id: str, change: EndpointPatch, pool: Pool, settings: Config
) -> EndpointOut:
    """Change an endpoint's URL, description or event-type filter."""
    if change.url is not None:
        _vet_url(change.url, settings)
    fields = change.model_dump(exclude_unset=True)
    async with pool.acquire() as conn, conn.transaction():
        await _get_endpoint(conn, endpoint_id)
        await conn.execute(
            "UPDATE endpoints SET url = coalesce($2, url), description = coalesce($3, description),"
            " event_types = CASE WHEN $4 THEN $5 ELSE event_types END, updated_at = now()"
            " WHERE id = $1",
            endpoint_id,
            change.url,
            change.description,
            "event_types" in fields,
            change.event_types,
        )
        await audit(
            conn,
            "endpoint",
            endpoint_id,
            None,
            "updated",
            actor="operator",
            reason=", ".join(sorted(fields)) or "nothing",
        )
        return _endpoint(await _get_endpoint(conn, endpoint_id))


async def _set_status(
    pool: asyncpg.Pool, endpoint_id: str, to: str, allowed: tuple[str, ...]
) -> EndpointOut:
    async with pool.acquire() as conn, conn.transaction():
        row = await _get_endpoint(conn, endpoint_id)
        if row["status"] not in allowed:
            raise OperatorError(409, f"endpoint {endpoint_id!r} is {row['status']}")
        changed = await conn.fetchval(
            "UPDATE endpoints SET status = $2, status_reason = NULL, updated_at = now(),"
            " consecutive_failures = CASE WHEN $2 = 'active' THEN 0 ELSE consecutive_failures END,"
            " failing_since = CASE WHEN $2 = 'active' THEN NULL ELSE failing_since END,"
            " circuit_open_until = CASE WHEN $2 = 'active' THEN NULL ELSE circuit_open_until END,"
            " circuit_trips = CASE WHEN $2 = 'active' THEN 0 ELSE circuit_trips END"
            " WHERE id = $1 AND status = $3 RETURNING id",
            endpoint_id,
            to,
            row["status"],
        )
        if changed is None:
            raise OperatorError(409, f"endpoint {endpoint_id!r} changed meanwhile; try again")
        await audit(
            conn,
            "endpoint",
            endpoint_id,
            row["status"],
            to,
            actor="operator",
            reason=f"operator set {to}",
        )
        if to == "active":
            # Deliveries held while paused go out again.
            await wake_delivery_relay(conn)
        changed = await conn.fetchrow(f"{_ENDPOINT} WHERE ep.id = $1", endpoint_id)
        assert changed is not None
        return _endpoint(changed)


@router.post(
    "/endpoints/{endpoint_id}/pause",
    dependencies=[Admin],
    response_model=EndpointOut,
    responses=problems(404, 409),
)
async def pause_endpoint(endpoint_id: str, pool: Pool) -> EndpointOut:
    """Hold deliveries to this endpoint (they are kept and go out on resume)."""
    return await _set_status(pool, endpoint_id, "paused", ("active",))


@router.post(
    "/endpoints/{endpoint_id}/resume",
    dependencies=[Admin],
    response_model=EndpointOut,
    responses=problems(404, 409),
)
async def resume_endpoint(endpoint_id: str, pool: Pool) -> EndpointOut:
    """Resume a paused endpoint or re-enable a disabled one (failure streak cleared).

    Deliveries dead-lettered while it was disabled stay dead letters: replay them.
    """
    return await _set_status(pool, endpoint_id, "active", ("active", "paused", "disabled"))


@router.delete(
    "/endpoints/{endpoint_id}",
    dependencies=[Admin],
    status_code=204,
    responses=problems(404, 409),
)
async def delete_endpoint(endpoint_id: str, pool: Pool) -> None:
    """Delete an endpoint: nothing more is sent to it; its pending deliveries are cancelled."""
    await _set_status(pool, endpoint_id, "deleted", ("active", "paused", "disabled"))


@router.post(
    "/endpoints/{endpoint_id}/secret/rotate",
    dependencies=[Admin],
    response_model=EndpointSecretRotated,
    responses=problems(404, 409),
)
async def rotate_endpoint_secret(
    endpoint_id: str,
    pool: Pool,
    settings: Config,
    overlap_seconds: Annotated[float | None, Query(ge=0, le=7 * 86400)] = None,
) -> EndpointSecretRotated:
    """Add a new secret. Until the overlap ends, every delivery is signed with old and new."""
    overlap = (
        settings.endpoint_secret_overlap_seconds if overlap_seconds is None else overlap_seconds
    )
    async with pool.acquire() as conn, conn.transaction():
        await _get_endpoint(conn, endpoint_id)
        live = await conn.fetchval(
            "SELECT count(*) FROM endpoint_secrets WHERE endpoint_id = $1"
            " AND (expires_at IS NULL OR expires_at > now())",
            endpoint_id,
        )
        if overlap > 0 and live >= MAX_LIVE_SECRETS:
            raise OperatorError(
                409,
                f"{live} secrets are live; wait for an overlap to end, or rotate with"
                " overlap_seconds=0 to replace them all",
            )
        secret, expires_at = await rotate_owned_secret(
            conn, "endpoint_secrets", endpoint_id, overlap_seconds=overlap
        )
        await audit(
            conn,
            "endpoint",
            endpoint_id,
            None,
            "secret_rotated",
            actor="operator",
            reason=f"overlap {overlap:g}s",
        )
    return EndpointSecretRotated(
        endpoint_id=endpoint_id, secret=secret, previous_secrets_expire_at=expires_at
    )


@router.get(
    "/endpoints/{endpoint_id}/attempts",
    dependencies=[Read],
    response_model=list[DeliveryAttemptOut],
    responses=problems(404),
)
async def list_endpoint_attempts(
    endpoint_id: str, pool: Pool, limit: Annotated[int, Query(gt=0, le=1000)] = 100
) -> list[DeliveryAttemptOut]:
    """The endpoint's latest delivery attempts, newest first."""
    await _get_endpoint(pool, endpoint_id)
    rows = await pool.fetch(
        f"SELECT {_ATTEMPT_COLUMNS} FROM delivery_attempts WHERE endpoint_id = $1"
        " ORDER BY id DESC LIMIT $2",
        endpoint_id,
        limit,
    )
    return [DeliveryAttemptOut(**dict(row)) for row in rows]


@router.get("/deliveries", dependencies=[Read], response_model=list[DeliveryOut])
async def list_deliveries(
    pool: Pool,
    endpoint_id: str | None = None,
    event_id: str | None = None,
    status: DeliveryStatusParam | None = None,
    since: IsoDateTime | None = None,
    until: IsoDateTime | None = None,
    limit: Annotated[int, Query(gt=0, le=1000)] = 100,
) -> list[DeliveryOut]:
    """Deliveries, newest first, with their attempt logs; filter by endpoint, event, status."""
    rows = await _select_deliveries(pool, endpoint_id, event_id, status, since, until, limit)
    attempts = await pool.fetch(
        f"SELECT {_ATTEMPT_COLUMNS} FROM delivery_attempts WHERE delivery_id = ANY($1::text[])"
        " ORDER BY id",
        [row["id"] for row in rows],
    )
    log: dict[str, list[DeliveryAttemptOut]] = {}
    for attempt in attempts:
        log.setdefault(attempt["delivery_id"], []).append(DeliveryAttemptOut(**dict(attempt)))
    return [_delivery(row, log.get(row["id"], [])) for row in rows]


@router.get("/events/{event_id}/deliveries", dependencies=[Read], response_model=list[DeliveryOut])
async def list_event_deliveries(event_id: str, pool: Pool) -> list[DeliveryOut]:
    """Every delivery of one merchant event (webhooks and emails) with its attempts."""
    return await list_deliveries(pool, event_id=event_id, limit=1000)


@router.post(
    "/deliveries/{delivery_id}/replay",
    dependencies=[Replay],
    response_model=ReplayResult,
    responses=problems(404, 409),
)
async def replay_delivery(delivery_id: str, pool: Pool) -> ReplayResult:
    """Deliver a dead-lettered delivery again, with the same webhook-id (audited)."""
    async with pool.acquire() as conn:
        replayed = await _replay(conn, [delivery_id], rate_per_second=None)
    if not replayed:
        if not await pool.fetchval("SELECT 1 FROM deliveries WHERE id = $1", delivery_id):
            raise OperatorError(404, f"no delivery {delivery_id!r}")
        raise OperatorError(409, f"{delivery_id!r} is not a dead-lettered delivery")
    return ReplayResult(matched=1, replayed=1, dry_run=False, event_ids=replayed)


@router.post("/deliveries/replay", dependencies=[Replay], response_model=ReplayResult)
async def replay_deliveries(selection: DeliveryReplayFilter, pool: Pool) -> ReplayResult:
    """Replay the dead-lettered deliveries of an endpoint and/or time range.

    ``dry_run`` (the default) only counts. A real replay releases them at most
    ``rate_per_second``, so a recovering merchant is not flooded. ``event_ids`` lists the
    delivery ids.
    """
    rows = await _select_deliveries(
        pool,
        selection.endpoint_id,
        None,
        "dead_lettered",
        selection.since,
        selection.until,
        selection.limit,
        oldest_first=True,
    )
    ids = [row["id"] for row in rows]
    if selection.dry_run:
        return ReplayResult(matched=len(ids), replayed=0, dry_run=True, event_ids=ids)
    async with pool.acquire() as conn:
        replayed = await _replay(conn, ids, rate_per_second=selection.rate_per_second)
    return ReplayResult(matched=len(ids), replayed=len(replayed), dry_run=False, event_ids=replayed)


async def _select_deliveries(
    pool: asyncpg.Pool,
    endpoint_id: str | None,
    event_id: str | None,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    *,
    oldest_first: bool = False,
) -> list[asyncpg.Record]:
    # A bulk replay takes the oldest first, so a lane's deliveries keep their order.
    order = "created_at, seq" if oldest_first else "created_at DESC, seq DESC"
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT * FROM deliveries WHERE ($1::text IS NULL OR endpoint_id = $1)"
        " AND ($2::text IS NULL OR event_id = $2) AND ($3::text IS NULL OR status = $3)"
        " AND ($4::timestamptz IS NULL OR created_at >= $4)"
        " AND ($5::timestamptz IS NULL OR created_at < $5)"
        f" ORDER BY {order} LIMIT $6",
        endpoint_id,
        event_id,
        status,
        since,
        until,
        limit,
    )
    return rows


def _delivery(row: asyncpg.Record, attempts: list[DeliveryAttemptOut]) -> DeliveryOut:
    fields: dict[str, Any] = {key: row[key] for key in DeliveryOut.model_fields if key in row}
    return DeliveryOut(**fields, attempt_log=attempts)


async def _replay(
    conn: Connection, delivery_ids: list[str], *, rate_per_second: float | None
) -> list[str]:
    """Open a new cycle for dead-lettered deliveries; returns the ids replayed."""
    DELIVERY_TRANSITIONS.check(DeliveryStatus.DEAD_LETTERED, DeliveryStatus.PENDING)
    async with conn.transaction():
        rows = await conn.fetch(
            "WITH locked AS (SELECT id, created_at, seq FROM deliveries"
            " WHERE id = ANY($1::text[]) AND status = $3 FOR UPDATE),"
            " chosen AS (SELECT id, row_number() OVER (ORDER BY created_at, seq) - 1 AS n"
            " FROM locked)"
            " UPDATE deliveries d SET status = $4, cycle = d.cycle + 1, last_error = NULL,"
            " finished_at = NULL, relay_lease_until = NULL,"
            " dispatch_after = CASE WHEN $2::float8 IS NULL THEN NULL"
            " ELSE clock_timestamp() + make_interval(secs => chosen.n / $2::float8) END"
            " FROM chosen WHERE d.id = chosen.id RETURNING d.id, d.event_id",
            delivery_ids,
            rate_per_second,
            DeliveryStatus.DEAD_LETTERED,
            DeliveryStatus.PENDING,
        )
        for row in rows:
            await audit(
                conn,
                DELIVERY_TRANSITIONS.entity,
                row["id"],
                DeliveryStatus.DEAD_LETTERED,
                DeliveryStatus.PENDING,
                actor="operator",
                reason="replayed",
                event_id=row["event_id"],
            )
        if rows:
            # A replay says "try again now": an open circuit lets its probe through at once.
            await conn.execute(
                "UPDATE endpoints SET circuit_open_until = clock_timestamp()"
                " WHERE circuit_open_until > clock_timestamp() AND id IN"
                " (SELECT endpoint_id FROM deliveries WHERE id = ANY($1::text[]))",
                [row["id"] for row in rows],
            )
            await wake_delivery_relay(conn)
    return [row["id"] for row in rows]
