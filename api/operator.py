"""Operator API (``/v1``): trace webhooks, list events and alerts, replay dead letters, and manage
partners and merchants. Every route needs an API key with the right scope (``api/auth.py``).

Replays are durable requests, not Temporal calls: a replayed dead letter goes back to ``received``
with its run counter raised, and the relay starts a fresh workflow for it (``...:replay-N``), so
replays work, and are audited, even while Temporal is down.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Path, Query, Request, Response

from api.auth import create_api_key, revoke_api_key
from api.deps import (
    OPERATOR_PROBLEMS,
    Admin,
    AdminOperator,
    Config,
    Pool,
    Read,
    ReplayOperator,
    single_valued_query,
)
from api.partners import rotate_secret
from api.problems import problems
from api.schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    DeadLetter,
    EventOut,
    IsoDateTime,
    Merchant,
    MerchantIn,
    MerchantPatch,
    PartnerCreated,
    PartnerIn,
    PartnerLinked,
    PartnerOut,
    PartnerPatch,
    ReplayFilter,
    ReplayResult,
    SecretRotated,
    Stats,
    TraceStep,
    WebhookTrace,
)
from core.audit import audit_many
from core.contracts import (
    INBOX_CHANNEL,
    WEBHOOK_TRANSITIONS,
    WebhookStatus,
    webhook_workflow_id,
)
from core.db import Connection
from core.errors import OperatorError
from core.merchant_events import events_after
from core.tenancy import (
    create_merchant,
    create_partner,
    link_partner,
    unlink_partner,
    update_merchant,
    update_partner,
)

__all__ = ["replay", "router"]

router = APIRouter(
    prefix="/v1",
    tags=["operator"],
    dependencies=[Depends(single_valued_query)],
    responses=OPERATOR_PROBLEMS,
)
MerchantPath = Annotated[str, Path(max_length=128)]

_TRACE_STEPS = (
    ("received", "received_at"),
    ("recorded", "recorded_at"),
    ("workflow_started", "workflow_started_at"),
)


@router.get(
    "/webhooks/{event_id}",
    dependencies=[Read],
    response_model=WebhookTrace,
    responses=problems(404),
)
async def trace_webhook(event_id: str, pool: Pool, settings: Config) -> WebhookTrace:
    """Follow one webhook: received → recorded → workflow started → applied → published →
    each delivery (webhooks to endpoints, emails) with its outcome."""
    hook = await pool.fetchrow("SELECT * FROM webhooks WHERE event_id = $1", event_id)
    if hook is None:
        raise OperatorError(404, f"no webhook {event_id!r}")
    steps = [TraceStep(step=step, at=hook[column]) for step, column in _TRACE_STEPS if hook[column]]
    for row in await pool.fetch(
        "SELECT entity_type, entity_id, from_state, to_state, reason, at FROM audit_log"
        " WHERE event_id = $1 ORDER BY id",
        event_id,
    ):
        steps.append(
            TraceStep(
                step=f"{row['entity_type']} {row['from_state'] or 'new'} → {row['to_state']}",
                at=row["at"],
                detail=row["reason"],
            )
        )
    if hook["processed_at"]:
        steps.append(TraceStep(step=hook["status"], at=hook["processed_at"], detail=hook["detail"]))
    elif hook["status"] == "waiting":
        steps.append(TraceStep(step="waiting", at=hook["recorded_at"], detail=hook["detail"]))
    if hook["published_at"]:
        steps.append(TraceStep(step="published", at=hook["published_at"]))
    for delivery in await pool.fetch(
        "SELECT id, endpoint_id, template, recipient, status, attempts, finished_at, created_at,"
        " last_error FROM deliveries WHERE event_id = $1 ORDER BY created_at, id",
        event_id,
    ):
        target = delivery["endpoint_id"] or f"{delivery['template']} to {delivery['recipient']}"
        steps.append(
            TraceStep(
                step=f"delivery {delivery['status']}: {target}",
                at=delivery["finished_at"] or delivery["created_at"],
                detail=f"{delivery['id']}, {delivery['attempts']} attempt(s)"
                + (f", {delivery['last_error']}" if delivery["last_error"] else ""),
            )
        )
    steps.sort(key=lambda s: s.at)
    event = await pool.fetchrow(
        "SELECT merchant_id, seq, type, data, created_at FROM events WHERE event_id = $1", event_id
    )
    workflow_id = hook["workflow_id"] or _expected_workflow_id(hook)
    return WebhookTrace(
        event_id=event_id,
        partner_id=hook["partner_id"],
        webhook_id=hook["webhook_id"],
        type=hook["event_type"],
        merchant_id=hook["merchant_id"],
        entity_key=hook["entity_key"],
        status=hook["status"],
        detail=hook["detail"],
        workflow_id=workflow_id,
        workflow_url=settings.workflow_ui_url(workflow_id) if workflow_id else None,
        steps=steps,
        merchant_event=dict(event) if event else None,
        payload=hook["payload"],
    )


def _expected_workflow_id(hook: asyncpg.Record) -> str | None:
    if hook["workflow_started_at"] is None:
        return None
    return webhook_workflow_id(hook["partner_id"], hook["webhook_id"], hook["run_count"])


@router.get("/events", dependencies=[Read], response_model=list[EventOut])
async def list_events(
    pool: Pool,
    merchant_id: str,
    after_seq: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(gt=0, le=1000)] = 100,
) -> list[EventOut]:
    """A merchant's events in ``seq`` order, after ``after_seq``."""
    rows = await events_after(pool, merchant_id, after_seq, limit=limit)
    return [EventOut(**dict(row)) for row in rows]


@router.get("/dead-letters", dependencies=[Read], response_model=list[DeadLetter])
async def list_dead_letters(
    pool: Pool,
    settings: Config,
    partner_id: str | None = None,
    since: IsoDateTime | None = None,
    until: IsoDateTime | None = None,
    limit: Annotated[int, Query(gt=0, le=1000)] = 100,
) -> list[DeadLetter]:
    """Webhooks parked for an operator, newest first."""
    rows = await _dead_letter_rows(pool, partner_id, since, until, limit)
    return [
        DeadLetter(
            event_id=row["event_id"],
            partner_id=row["partner_id"],
            webhook_id=row["webhook_id"],
            type=row["event_type"],
            reason=row["reason"],
            created_at=row["created_at"],
            replay_count=row["replay_count"],
            trace_url=f"{settings.public_base_url}/v1/webhooks/{row['event_id']}",
        )
        for row in rows
    ]


async def _dead_letter_rows(
    pool: asyncpg.Pool,
    partner_id: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT d.event_id, d.reason, d.created_at, d.replay_count, w.partner_id, w.webhook_id,"
        " w.event_type FROM dead_letters d JOIN webhooks w USING (event_id)"
        " WHERE w.status = 'dead_lettered' AND ($1::text IS NULL OR w.partner_id = $1)"
        " AND ($2::timestamptz IS NULL OR d.created_at >= $2)"
        " AND ($3::timestamptz IS NULL OR d.created_at < $3)"
        " ORDER BY d.created_at DESC LIMIT $4",
        partner_id,
        since,
        until,
        limit,
    )
    return rows


@router.post(
    "/dead-letters/{event_id}/replay",
    response_model=ReplayResult,
    responses=problems(409, why={409: "Not a dead letter (or no such webhook)."}),
)
async def replay_one(event_id: str, pool: Pool, operator: ReplayOperator) -> ReplayResult:
    """Run a dead-lettered webhook again (a new workflow, audited)."""
    async with pool.acquire() as conn:
        replayed = await replay(conn, [event_id], actor=operator.actor)
    if not replayed:
        raise OperatorError(409, f"{event_id!r} is not a dead letter")
    return ReplayResult(matched=1, replayed=1, dry_run=False, event_ids=replayed)


@router.post("/dead-letters/replay", response_model=ReplayResult)
async def replay_many(
    selection: ReplayFilter, pool: Pool, operator: ReplayOperator
) -> ReplayResult:
    """Replay every dead letter matching the filter; ``dry_run`` (the default) only counts."""
    rows = await _dead_letter_rows(
        pool, selection.partner_id, selection.since, selection.until, selection.limit
    )
    event_ids = [row["event_id"] for row in rows]
    if selection.dry_run:
        return ReplayResult(matched=len(rows), replayed=0, dry_run=True, event_ids=event_ids)
    async with pool.acquire() as conn:
        replayed = await replay(conn, event_ids, actor=operator.actor)
    return ReplayResult(
        matched=len(rows), replayed=len(replayed), dry_run=False, event_ids=replayed
    )


async def replay(conn: Connection, event_ids: list[str], *, actor: str) -> list[str]:
    """Send dead letters back to the inbox for a fresh workflow run; returns those replayed."""
    async with conn.transaction():
        rows = await conn.fetch(
            "UPDATE webhooks SET status = $3, run_count = run_count + 1,"
            " relay_lease_until = NULL, workflow_started_at = NULL, processed_at = NULL,"
            " workflow_id = NULL, detail = NULL"
            " WHERE event_id = ANY($1::text[]) AND status = $2 RETURNING event_id",
            event_ids,
            WebhookStatus.DEAD_LETTERED,
            WebhookStatus.RECEIVED,
        )
        replayed = [row["event_id"] for row in rows]
        if replayed:
            await conn.execute(
                "UPDATE dead_letters SET replayed_at = clock_timestamp(),"
                " replay_count = replay_count + 1 WHERE event_id = ANY($1::text[])",
                replayed,
            )
            await audit_many(
                conn,
                WEBHOOK_TRANSITIONS.entity,
                replayed,
                WebhookStatus.DEAD_LETTERED,
                WebhookStatus.RECEIVED,
                actor=actor,
                reason="replayed",
                event_ids=replayed,
            )
            await conn.execute("SELECT pg_notify($1, '')", INBOX_CHANNEL)
    return replayed


@router.post("/api-keys", response_model=ApiKeyCreated, status_code=201)
async def add_api_key(new_key: ApiKeyIn, pool: Pool, operator: AdminOperator) -> ApiKeyCreated:
    """Create an operator API key with the given scopes (the key is shown once; audited)."""
    async with pool.acquire() as conn:
        key_id, key = await create_api_key(
            conn, new_key.name, list(new_key.scopes), actor=operator.actor
        )
    return ApiKeyCreated(id=key_id, name=new_key.name, scopes=list(new_key.scopes), key=key)


@router.get("/api-keys", dependencies=[Admin], response_model=list[ApiKeyOut])
async def list_api_keys(pool: Pool) -> list[ApiKeyOut]:
    """Every stored API key (never the key itself), revoked ones included."""
    rows = await pool.fetch(
        "SELECT id, name, scopes, created_at, revoked_at FROM api_keys ORDER BY id"
    )
    return [ApiKeyOut(**dict(row)) for row in rows]


@router.delete("/api-keys/{key_id}", response_model=ApiKeyOut, responses=problems(404))
async def revoke_key(
    key_id: Annotated[int, Path(ge=1, le=2**63 - 1)], pool: Pool, operator: AdminOperator
) -> ApiKeyOut:
    """Revoke an API key at once (audited). Revoking it again changes nothing."""
    async with pool.acquire() as conn:
        row = await revoke_api_key(conn, key_id, actor=operator.actor)
    return ApiKeyOut(**dict(row))


@router.get("/partners", dependencies=[Admin], response_model=list[PartnerOut])
async def list_partners(pool: Pool) -> list[PartnerOut]:
    """Partners with their settings and how many of their secrets are live."""
    return await _partners(pool)


async def _partners(pool: asyncpg.Pool, partner_id: str | None = None) -> list[PartnerOut]:
    rows = await pool.fetch(
        "SELECT p.id, p.name, p.rate_limit_per_second, p.auto_onboard_merchants, p.created_at,"
        " count(s.id) AS live_secrets"
        " FROM partners p LEFT JOIN partner_secrets s ON s.partner_id = p.id"
        " AND (s.expires_at IS NULL OR s.expires_at > now())"
        " WHERE $1::text IS NULL OR p.id = $1 GROUP BY p.id ORDER BY p.id",
        partner_id,
    )
    return [PartnerOut(**dict(row)) for row in rows]


@router.post("/partners", response_model=PartnerCreated, status_code=201, responses=problems(409))
async def add_partner(partner: PartnerIn, pool: Pool, operator: AdminOperator) -> PartnerCreated:
    """Create a partner and return its signing secret (shown once)."""
    async with pool.acquire() as conn:
        secret = await create_partner(
            conn,
            partner.id,
            partner.name or partner.id,
            rate_limit_per_second=partner.rate_limit_per_second,
            auto_onboard_merchants=partner.auto_onboard_merchants,
            actor=operator.actor,
        )
    return PartnerCreated(id=partner.id, secret=secret)


@router.patch("/partners/{partner_id}", response_model=PartnerOut, responses=problems(404))
async def change_partner(
    partner_id: Annotated[str, Path(max_length=64)],
    changes: PartnerPatch,
    request: Request,
    pool: Pool,
    operator: AdminOperator,
) -> PartnerOut:
    """Change a partner's name, rate limit or merchant onboarding; only the fields sent."""
    async with pool.acquire() as conn:
        await update_partner(
            conn, partner_id, changes.model_dump(exclude_unset=True), actor=operator.actor
        )
    request.app.state.ingress.partners.forget(partner_id)
    (partner,) = await _partners(pool, partner_id)
    return partner


@router.post(
    "/partners/{partner_id}/secrets",
    dependencies=[Admin],
    response_model=SecretRotated,
    responses=problems(404),
)
async def rotate_partner_secret(
    partner_id: str,
    request: Request,
    pool: Pool,
    overlap_seconds: Annotated[int, Query(ge=0, le=30 * 86400)] = 86400,
) -> SecretRotated:
    """Add a new secret; the current ones keep verifying for ``overlap_seconds``."""
    async with pool.acquire() as conn:
        secret, expires_at = await rotate_secret(conn, partner_id, overlap_seconds=overlap_seconds)
    request.app.state.ingress.partners.forget(partner_id)
    return SecretRotated(
        partner_id=partner_id, secret=secret, previous_secrets_expire_at=expires_at
    )


@router.get("/merchants", dependencies=[Read], response_model=list[Merchant])
async def list_merchants(
    pool: Pool, limit: Annotated[int, Query(gt=0, le=1000)] = 100
) -> list[Merchant]:
    rows = await pool.fetch(
        "SELECT m.*, coalesce(array_agg(l.partner_id ORDER BY l.partner_id)"
        " FILTER (WHERE l.partner_id IS NOT NULL), '{}') AS partners FROM merchants m"
        " LEFT JOIN merchant_partners l ON l.merchant_id = m.id GROUP BY m.id ORDER BY m.id"
        " LIMIT $1",
        limit,
    )
    return [Merchant(**dict(row)) for row in rows]


@router.post(
    "/merchants",
    response_model=Merchant,
    status_code=201,
    responses=problems(404, 409, why={404: "A partner to link does not exist."}),
)
async def add_merchant(merchant: MerchantIn, pool: Pool, operator: AdminOperator) -> Merchant:
    """Create a merchant, linked to the partners that process for it (409 if it exists)."""
    async with pool.acquire() as conn:
        await create_merchant(
            conn,
            merchant.id,
            name=merchant.name,
            email=merchant.email,
            partner_ids=merchant.partners,
            actor=operator.actor,
        )
        return await _merchant(conn, merchant.id)


@router.patch("/merchants/{merchant_id}", response_model=Merchant, responses=problems(404))
async def change_merchant(
    merchant_id: MerchantPath, changes: MerchantPatch, pool: Pool, operator: AdminOperator
) -> Merchant:
    """Change only the fields sent (``null`` clears one); audited."""
    async with pool.acquire() as conn:
        await update_merchant(
            conn, merchant_id, changes.model_dump(exclude_unset=True), actor=operator.actor
        )
        return await _merchant(conn, merchant_id)


@router.get(
    "/merchants/{merchant_id}",
    dependencies=[Read],
    response_model=Merchant,
    responses=problems(404),
)
async def get_merchant(merchant_id: MerchantPath, pool: Pool) -> Merchant:
    """A merchant with its linked partners, the balances each reports, and its latest ``seq``."""
    async with pool.acquire() as conn:
        return await _merchant(conn, merchant_id)


@router.put(
    "/merchants/{merchant_id}/partners/{partner_id}",
    response_model=PartnerLinked,
    responses=problems(404),
)
async def link_merchant_partner(
    merchant_id: MerchantPath,
    partner_id: Annotated[str, Path(max_length=64)],
    pool: Pool,
    operator: AdminOperator,
) -> PartnerLinked:
    """Link a partner to a merchant (audited): its webhooks for the merchant take effect from
    now on, and those parked for lack of the link run again."""
    async with pool.acquire() as conn, conn.transaction():
        created, parked = await link_partner(conn, merchant_id, partner_id, actor=operator.actor)
        replayed = await replay(conn, parked, actor=operator.actor) if parked else []
    return PartnerLinked(
        merchant_id=merchant_id, partner_id=partner_id, created=created, replayed=replayed
    )


@router.delete(
    "/merchants/{merchant_id}/partners/{partner_id}", status_code=204, responses=problems(404)
)
async def unlink_merchant_partner(
    merchant_id: MerchantPath,
    partner_id: Annotated[str, Path(max_length=64)],
    pool: Pool,
    operator: AdminOperator,
) -> Response:
    """Unlink a partner (audited): its later webhooks for the merchant are parked."""
    async with pool.acquire() as conn:
        await unlink_partner(conn, merchant_id, partner_id, actor=operator.actor)
    return Response(status_code=204)


async def _merchant(conn: Connection, merchant_id: str) -> Merchant:
    row = await conn.fetchrow("SELECT * FROM merchants WHERE id = $1", merchant_id)
    if row is None:
        raise OperatorError(404, f"no merchant {merchant_id!r}")
    partners = await conn.fetch(
        "SELECT partner_id FROM merchant_partners WHERE merchant_id = $1 ORDER BY partner_id",
        merchant_id,
    )
    balances = await conn.fetch(
        "SELECT partner_id, currency, available, pending, as_of FROM balances"
        " WHERE merchant_id = $1 ORDER BY partner_id, currency",
        merchant_id,
    )
    return Merchant(
        **dict(row),
        partners=[p["partner_id"] for p in partners],
        balances=[_jsonable(dict(b)) for b in balances],
    )


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


@router.get("/stats", dependencies=[Read], response_model=Stats)
async def stats(
    pool: Pool, partner_id: str | None = None, since: IsoDateTime | None = None
) -> Stats:
    """Inbox depth, webhooks by status (optionally one partner's, received since a time),
    open alerts and dead letters."""
    rows = await pool.fetch(
        "SELECT status, count(*) AS n FROM webhooks WHERE ($1::text IS NULL OR partner_id = $1)"
        " AND ($2::timestamptz IS NULL OR received_at >= $2) GROUP BY status",
        partner_id,
        since,
    )
    by_status = {row["status"]: row["n"] for row in rows}
    open_alerts = await pool.fetchval("SELECT count(*) FROM alerts WHERE status = 'open'")
    return Stats(
        inbox_depth=by_status.get("received", 0),
        by_status=by_status,
        open_alerts=open_alerts,
        dead_letters=by_status.get("dead_lettered", 0),
    )
