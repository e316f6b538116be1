"""On-call API: alerts and their groups, acknowledge, resolve, silences, and Slack's buttons.

Acknowledge and resolve are updates of the group's escalation workflow
(:class:`workflows.escalation.EscalationWorkflow`): its validator answers at once, so "already
resolved" is a clean 409 rather than a lost or doubled action. Every action is audited with the
acting API key (or the Slack user). Slack's interactive callbacks are verified with slack-sdk's
:class:`~slack_sdk.signature.SignatureVerifier` (signature and a 5-minute timestamp window), and
each one is accepted once (a replay inside the window is refused).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import parse_qs

import asyncpg
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from redis.exceptions import RedisError
from slack_sdk.signature import SignatureVerifier
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.auth import Operator, require
from api.deps import OPERATOR_PROBLEMS, Config, Pool, Read, Temporal, single_valued_query
from api.problems import problems
from api.schemas import Alert, AlertGroup, AlertResolution, Silence, SilenceIn, TimelineEntry
from core.audit import audit
from core.contracts import ALREADY_DONE, escalation_workflow_id
from core.errors import OperatorError

__all__ = ["router", "slack_router"]

router = APIRouter(
    prefix="/v1",
    tags=["on-call"],
    dependencies=[Depends(single_valued_query)],
    responses=OPERATOR_PROBLEMS,
)
slack_router = APIRouter(tags=["on-call"])
Ack = Annotated[Operator, Depends(require("replay"))]
AlertId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.get("/alerts", dependencies=[Read], response_model=list[Alert])
async def list_alerts(
    pool: Pool,
    status: Annotated[str | None, Query(max_length=20)] = "open",
    kind: Annotated[str | None, Query(max_length=100)] = None,
    severity: Annotated[str | None, Query(max_length=20)] = None,
    limit: Annotated[int, Query(gt=0, le=1000)] = 100,
) -> list[Alert]:
    """Alerts, newest first (``status=open`` by default; ``status=`` for all)."""
    rows = await pool.fetch(
        "SELECT * FROM alerts WHERE ($1::text IS NULL OR $1 = '' OR status = $1)"
        " AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR severity = $3)"
        " ORDER BY last_seen_at DESC LIMIT $4",
        status,
        kind,
        severity,
        limit,
    )
    return [_alert(row) for row in rows]


@router.get(
    "/alerts/{alert_id}",
    dependencies=[Read],
    response_model=AlertGroup,
    responses=problems(404, 409),
)
async def show_alert(alert_id: AlertId, pool: Pool, settings: Config) -> AlertGroup:
    """An alert's group: its alerts, state, and timeline (raised, grouped, notified where,
    acknowledged by whom, escalated, resolved)."""
    group_id = await _group_of(pool, alert_id)
    group = await pool.fetchrow("SELECT * FROM alert_groups WHERE id = $1", group_id)
    assert group is not None
    alerts = await pool.fetch("SELECT * FROM alerts WHERE group_id = $1 ORDER BY id", group_id)
    timeline = await pool.fetch(
        "SELECT at, action, channel, actor, detail FROM alert_timeline WHERE group_id = $1"
        " ORDER BY id",
        group_id,
    )
    return AlertGroup(
        **{k: group[k] for k in AlertGroup.model_fields if k in group},
        workflow_url=settings.workflow_ui_url(group["workflow_id"])
        if group["workflow_id"]
        else None,
        alerts=[_alert(row) for row in alerts],
        timeline=[TimelineEntry(**dict(row)) for row in timeline],
    )


@router.post(
    "/alerts/{alert_id}/acknowledge", response_model=AlertGroup, responses=problems(404, 409, 503)
)
async def acknowledge(
    alert_id: AlertId, pool: Pool, settings: Config, temporal: Temporal, operator: Ack
) -> AlertGroup:
    """Acknowledge the alert's group: escalation stops (409 if already acknowledged or
    resolved)."""
    group_id = await _group_of(pool, alert_id)
    await _update(temporal, group_id, "acknowledge", operator.actor)
    return await show_alert(alert_id, pool, settings)


@router.post(
    "/alerts/{alert_id}/resolve", response_model=AlertGroup, responses=problems(404, 409, 503)
)
async def resolve(
    alert_id: AlertId,
    resolution: AlertResolution,
    pool: Pool,
    settings: Config,
    temporal: Temporal,
    operator: Ack,
) -> AlertGroup:
    """Resolve the alert's group and every alert in it (409 if already resolved)."""
    group_id = await _group_of(pool, alert_id)
    await _update(temporal, group_id, "resolve", operator.actor, resolution.reason)
    return await show_alert(alert_id, pool, settings)


@router.post("/silences", response_model=Silence, status_code=201)
async def add_silence(silence: SilenceIn, pool: Pool, operator: Ack) -> Silence:
    """Hold back notifications of every alert the matchers match, for a while (audited)."""
    starts = silence.starts_at or datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO silences (matchers, starts_at, ends_at, created_by, comment)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING *",
            silence.matchers,
            starts,
            starts + timedelta(seconds=silence.duration_seconds),
            operator.actor,
            silence.comment,
        )
        assert row is not None
        await audit(
            conn,
            "silence",
            str(row["id"]),
            None,
            "active",
            actor=operator.actor,
            reason=silence.comment,
        )
    return Silence(**dict(row))


@router.get("/silences", dependencies=[Read], response_model=list[Silence])
async def list_silences(
    pool: Pool, include_expired: bool = False, limit: Annotated[int, Query(gt=0, le=1000)] = 100
) -> list[Silence]:
    """Silences, newest first (active and future ones unless ``include_expired``)."""
    rows = await pool.fetch(
        "SELECT * FROM silences WHERE $1 OR ends_at > now() ORDER BY id DESC LIMIT $2",
        include_expired,
        limit,
    )
    return [Silence(**dict(row)) for row in rows]


@router.delete("/silences/{silence_id}", response_model=Silence, responses=problems(404))
async def expire_silence(silence_id: AlertId, pool: Pool, operator: Ack) -> Silence:
    """End a silence now (audited); ending an ended one changes nothing."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE silences SET ends_at = greatest(starts_at + interval '1 microsecond', now())"
            " WHERE id = $1 AND ends_at > now() RETURNING *",
            silence_id,
        )
        if row is not None:
            await audit(
                conn,
                "silence",
                str(silence_id),
                "active",
                "expired",
                actor=operator.actor,
                reason=None,
            )
        else:
            row = await conn.fetchrow("SELECT * FROM silences WHERE id = $1", silence_id)
            if row is None:
                raise OperatorError(404, f"no silence {silence_id}")
    return Silence(**dict(row))


@slack_router.post("/slack/interactions", include_in_schema=False)
async def slack_interaction(request: Request, temporal: Temporal) -> Response:
    """Slack's interactive callback (the Acknowledge button): verified, accepted once."""
    settings = request.app.state.settings
    body = await request.body()
    verifier = SignatureVerifier(settings.slack_signing_secret.get_secret_value())
    if not verifier.is_valid_request(body, dict(request.headers)):
        raise OperatorError(401, "the Slack signature is missing, wrong or stale")
    fingerprint = hashlib.sha256(body + request.headers.get("x-slack-signature", "").encode())
    try:
        first_time = await request.app.state.redis.set(
            f"slack-callback:{fingerprint.hexdigest()}", 1, nx=True, ex=600
        )
    except RedisError:
        # Without the replay guard the callback cannot be accepted once: Slack shows the
        # failure and the user clicks again.
        raise OperatorError(503, "callbacks cannot be checked for replays right now") from None
    if not first_time:
        raise OperatorError(409, "this Slack callback was already handled")
    payload = _slack_payload(body)
    actions = payload.get("actions") or []
    user = (payload.get("user") or {}).get("username") or (payload.get("user") or {}).get("id")
    for action in actions:
        if action.get("action_id") == "acknowledge" and str(action.get("value", "")).startswith(
            "ag_"
        ):
            try:
                await _update(temporal, str(action["value"]), "acknowledge", f"slack:{user}")
            except OperatorError as error:
                if error.status != 409:
                    raise
    return Response(status_code=200)


def _slack_payload(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(parse_qs(body.decode())["payload"][0])
    except (KeyError, IndexError, ValueError, UnicodeDecodeError):
        raise OperatorError(400, "not a Slack interaction payload") from None
    if not isinstance(payload, dict):
        raise OperatorError(400, "not a Slack interaction payload")
    return payload


async def _group_of(pool: asyncpg.Pool, alert_id: int) -> str:
    row = await pool.fetchrow("SELECT group_id FROM alerts WHERE id = $1", alert_id)
    if row is None:
        raise OperatorError(404, f"no alert {alert_id}")
    if row["group_id"] is None:
        raise OperatorError(409, f"alert {alert_id} is not routed yet; retry in a moment")
    group_id: str = row["group_id"]
    return group_id


async def _update(temporal: Client, group_id: str, update: str, *args: str) -> None:
    handle = temporal.get_workflow_handle(escalation_workflow_id(group_id))
    try:
        await handle.execute_update(update, args=list(args))
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.type == ALREADY_DONE:
            raise OperatorError(409, cause.message) from None
        raise OperatorError(422, str(cause or error)) from None
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            # The escalation has ended: the group was resolved.
            raise OperatorError(409, f"alert group {group_id} is already resolved") from None
        raise OperatorError(503, f"the escalation cannot be reached right now: {error}") from None


def _alert(row: asyncpg.Record) -> Alert:
    fields = {k: row[k] for k in Alert.model_fields if k != "event_id"}
    event_id = (row["details"] or {}).get("event_id")
    return Alert(**fields, event_id=event_id if isinstance(event_id, str) else None)
