"""Exchange request activities: what the request's workflow does when a timer fires or the
request moves, each a short Postgres transaction that re-checks the request first.

Timers act only through conditional writes: the pending-SLA alert is raised only if the request
is still ``pending`` at the version the timer was armed for, and an idle assignment goes back to
the queue only if it is still ``assigned`` at that version (both under the row lock every
transition takes, :mod:`core.exchange`). So a timer racing a human transition either acts first
(and the human's precondition then sees its write) or finds the request moved on and does
nothing. Customer emails go through the delivery outbox (:func:`core.outbox.plan_notice`), once
per request and milestone; analytics events once per request and version.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from redis.asyncio import Redis
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.email import format_amount
from core import exchange, feeds
from core.alerting import Severity, alert_kind
from core.audit import raise_alert, resolve_alert
from core.contracts import (
    ExchangeNoticeInput,
    ExchangeState,
    ExchangeStatus,
    ExchangeTimerInput,
    ExchangeTimerResult,
)
from core.db import Connection
from core.errors import ExchangeConflict, PermanentEventError
from core.exchange_workflow import state_of
from core.outbox import delivery_id, plan_notice

__all__ = [
    "EXCHANGE_PENDING_SLA",
    "NOTICE_TEMPLATE",
    "SLA_ACTOR",
    "ExchangeActivities",
    "pending_sla_dedup_key",
]

EXCHANGE_PENDING_SLA = alert_kind(
    "exchange_pending_sla",
    Severity.WARNING,
    "An exchange request waited in the desk's queue past its SLA without an operator claiming"
    " it (resolved once it is claimed or ends).",
)
SLA_ACTOR = "system:sla"
"""The audit actor of transitions a timer makes."""
NOTICE_TEMPLATE = "exchange_request"
# Which milestone each status tells the customer about (one email per milestone).
MILESTONES = {
    ExchangeStatus.CREATED: "received",
    ExchangeStatus.PENDING: "received",
    ExchangeStatus.ASSIGNED: "received",
    ExchangeStatus.PROCESSING: "processing",
    ExchangeStatus.COMPLETED: "completed",
    ExchangeStatus.FAILED: "failed",
    ExchangeStatus.CANCELLED: "cancelled",
}

_LOCKED = (
    "SELECT id, merchant_id, status, version, assignee,"
    " extract(epoch FROM clock_timestamp() - updated_at)::float8 AS age"
    " FROM exchange_requests WHERE id = $1"
)


def pending_sla_dedup_key(request_id: str) -> str:
    """The dedup key of one request's pending-SLA alert."""
    return f"exchange_pending_sla:{request_id}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class ExchangeActivities:
    """The exchange workflow's steps; the Postgres pool and the Redis client (to publish a
    release to the gateway's watchers) are injected."""

    def __init__(self, pool: asyncpg.Pool, redis: Redis) -> None:
        self._pool = pool
        self._redis = redis

    @activity.defn(name="exchange_look_up")
    async def look_up(self, request_id: str) -> ExchangeState:
        """The request as Postgres holds it now."""
        async with self._pool.acquire() as conn:
            return state_of(*await _read(conn, request_id))

    @activity.defn(name="exchange_check_pending_sla")
    async def check_pending_sla(self, timer: ExchangeTimerInput) -> ExchangeTimerResult:
        """Raise the pending-SLA alert if the request is still pending at ``timer.version``."""
        async with self._pool.acquire() as conn, conn.transaction():
            row, age = await _read(conn, timer.request_id, lock=True)
            late = row["status"] == ExchangeStatus.PENDING and row["version"] == timer.version
            if late:
                waited = _duration(timer.after_seconds)
                await raise_alert(
                    conn,
                    EXCHANGE_PENDING_SLA,
                    dedup_key=pending_sla_dedup_key(row["id"]),
                    summary=f"exchange request {row['id']} of {row['merchant_id']} unclaimed"
                    f" for {waited}",
                    details={"merchant_id": row["merchant_id"], "request_id": row["id"]},
                )
        return ExchangeTimerResult(state_of(row, age), acted=late)

    @activity.defn(name="exchange_resolve_pending_sla")
    async def resolve_pending_sla(self, request_id: str) -> ExchangeState:
        """Resolve the request's pending-SLA alert unless it is (again) pending."""
        async with self._pool.acquire() as conn, conn.transaction():
            row, age = await _read(conn, request_id, lock=True)
            if row["status"] != ExchangeStatus.PENDING:
                by = f" by {row['assignee']}" if row["assignee"] else ""
                await resolve_alert(
                    conn, pending_sla_dedup_key(request_id), reason=f"{row['status']}{by}"
                )
        return state_of(row, age)

    @activity.defn(name="exchange_release_idle")
    async def release_idle(self, timer: ExchangeTimerInput) -> ExchangeTimerResult:
        """Put the request back in the queue if it is still assigned at ``timer.version``; the
        audited reason names the assignee (what they and the desk see)."""
        async with self._pool.acquire() as conn:
            row, age = await _read(conn, timer.request_id)
            if row["status"] != ExchangeStatus.ASSIGNED or row["version"] != timer.version:
                return ExchangeTimerResult(state_of(row, age), acted=False)
            reason = (
                f"no progress for {_duration(timer.after_seconds)} while assigned to"
                f" {row['assignee']}: back in the queue"
            )
            try:
                released = await exchange.expire_assignment(
                    conn, timer.request_id, version=timer.version, actor=SLA_ACTOR, reason=reason
                )
            except ExchangeConflict:  # a human moved it between the read and the lock
                row, age = await _read(conn, timer.request_id)
                return ExchangeTimerResult(state_of(row, age), acted=False)
        activity.logger.info("exchange request %s: %s", timer.request_id, reason)
        await feeds.publish_events(self._pool, self._redis, exchange.transition_event_ids(released))
        return ExchangeTimerResult(state_of(released), acted=True)

    @activity.defn(name="exchange_notify_customer")
    async def notify_customer(self, notice: ExchangeNoticeInput) -> str | None:
        """Plan the customer's email about the milestone ``notice.state`` reached (once per
        milestone); returns the delivery's id, or None if the request has no customer email."""
        milestone = MILESTONES[notice.state.status]
        row = await self._pool.fetchrow(
            "SELECT r.id, r.merchant_id, r.customer_email, r.from_amount, r.from_currency,"
            " r.to_currency, r.quote, m.name AS merchant_name FROM exchange_requests r"
            " JOIN merchants m ON m.id = r.merchant_id WHERE r.id = $1",
            notice.request_id,
        )
        if row is None:
            raise _missing(notice.request_id)
        recipient = row["customer_email"]
        if recipient is None:
            return None
        key = f"exchange:{row['id']}:{milestone}"
        context: dict[str, Any] = {
            "milestone": milestone,
            "request_id": row["id"],
            "merchant_name": row["merchant_name"] or row["merchant_id"],
            "amount": format_amount(row["from_amount"], row["from_currency"]),
            "to_currency": row["to_currency"],
            "quote": format_amount(row["quote"], row["to_currency"]) if row["quote"] else None,
        }
        async with self._pool.acquire() as conn, conn.transaction():
            planned = delivery_id(key, recipient)
            if await conn.fetchval("SELECT true FROM deliveries WHERE id = $1", planned):
                return planned  # a retry after the first attempt committed
            return await plan_notice(
                conn,
                merchant_id=row["merchant_id"],
                recipient=recipient,
                template=NOTICE_TEMPLATE,
                key=key,
                context=context,
            )

    @activity.defn(name="exchange_record_analytics")
    async def record_analytics(self, notice: ExchangeNoticeInput) -> None:
        """Record that the request reached ``notice.state`` (once per version), timed by the
        audit entry of that transition (each version is one audited transition)."""
        state = notice.state
        await self._pool.execute(
            "INSERT INTO exchange_analytics_events (request_id, merchant_id, version, status,"
            " assignee, entered_at, seconds_since_created)"
            " SELECT r.id, r.merchant_id, $2, $3, $4, a.at,"
            " extract(epoch FROM a.at - r.created_at) FROM exchange_requests r"
            " CROSS JOIN LATERAL (SELECT at FROM audit_log WHERE entity_type = $5"
            "  AND entity_id = r.id ORDER BY id OFFSET $2 - 1 LIMIT 1) a"
            " WHERE r.id = $1 ON CONFLICT (request_id, version) DO NOTHING",
            notice.request_id,
            state.version,
            state.status,
            state.assignee,
            exchange.ENTITY,
        )


async def _read(
    conn: Connection, request_id: str, *, lock: bool = False
) -> tuple[asyncpg.Record, float]:
    row = await conn.fetchrow(_LOCKED + (" FOR UPDATE" if lock else ""), request_id)
    if row is None:
        raise _missing(request_id)
    return row, max(0.0, row["age"])


def _missing(request_id: str) -> ApplicationError:
    return ApplicationError(
        f"no exchange request {request_id}",
        type=PermanentEventError.__name__,
        non_retryable=True,
    )
