"""Delivery activities: one attempt at one outbound webhook or email, and its bookkeeping.

An attempt first checks whether it should dial at all (delivered already, endpoint paused,
disabled or deleted, an earlier delivery of its lane still open, the endpoint's circuit open
(:mod:`activities.circuit_breaker`) or too many attempts already in flight to it). Then it
sends: a Standard Webhooks POST signed with every live secret of the endpoint
(:mod:`activities.webhook_http`), or an email over SMTP. Then, in one transaction, it logs the
attempt, moves the delivery on (as :data:`core.contracts.DELIVERY_TRANSITIONS` draws it), and
updates the endpoint's health (:mod:`activities.endpoint_health`). Deliveries are planned by
the ledger (:mod:`core.outbox`).

Sending happens before the transaction, so a crash between the two repeats the send with the
same ``webhook-id`` (receivers deduplicate on it) and never loses it.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpcore
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.circuit_breaker import ENDPOINTS, CircuitBreaker
from activities.email import Mailer, format_amount
from activities.endpoint_health import EndpointHealth
from activities.webhook_http import (
    RESPONSE_HEAD_BYTES,
    Sent,
    WorkerBusy,
    ms_since,
    post_webhook,
    webhook_body,
)
from core.alerting import Severity, alert_kind
from core.audit import audit, raise_alert
from core.contracts import (
    DELIVERY_TRANSITIONS,
    AttemptInput,
    AttemptResult,
    DeliveryStatus,
    Verdict,
)
from core.db import Connection
from core.errors import PermanentEventError
from core.metrics import DELIVERY_ATTEMPTS, DELIVERY_LATENCY
from core.settings import Settings

__all__ = ["DeliveryActivities"]

DELIVERY_EXHAUSTED = alert_kind(
    "delivery_exhausted",
    Severity.WARNING,
    "Deliveries to one endpoint (or of one email) failed every retry and were dead-lettered.",
)


# A busy endpoint is asked again after about this long (jittered by the lane).
BUSY_RETRY_SECONDS = 1.0

DELIVERY_TRANSITIONS.check(DeliveryStatus.PENDING, DeliveryStatus.SUCCEEDED)

_LOAD = f"""
SELECT d.id, d.event_id, d.merchant_id, d.seq, d.channel, d.endpoint_id, d.recipient,
       d.template, d.notice, d.lane, d.status, d.cycle,
       e.type AS event_type, e.data AS event_data, e.created_at AS event_at,
       ep.url, ep.status AS endpoint_status, ep.circuit_open_until,
       m.name AS merchant_name, clock_timestamp() AS now,
       (SELECT p.id FROM deliveries p WHERE p.lane = d.lane
        AND p.status = '{DeliveryStatus.PENDING}' AND p.seq < d.seq LIMIT 1) AS waits_for,
       array(SELECT s.secret FROM endpoint_secrets s WHERE s.endpoint_id = d.endpoint_id
             AND (s.expires_at IS NULL OR s.expires_at > clock_timestamp())
             ORDER BY s.id DESC) AS secrets
FROM deliveries d
LEFT JOIN events e ON e.event_id = d.event_id
LEFT JOIN endpoints ep ON ep.id = d.endpoint_id
LEFT JOIN merchants m ON m.id = d.merchant_id
WHERE d.id = $1
"""


class DeliveryActivities:
    """Attempts deliveries; clients (Postgres, the vetted HTTP pool, SMTP) are injected."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        http: httpcore.AsyncConnectionPool,
        mailer: Mailer,
        settings: Settings,
    ) -> None:
        self._pool = pool
        self._http = http
        self._mailer = mailer
        self._settings = settings
        self._breaker = CircuitBreaker(ENDPOINTS, settings)
        self._in_flight: Counter[str] = Counter()

    @activity.defn(name="attempt_delivery")
    async def attempt_delivery(self, request: AttemptInput) -> AttemptResult:
        """Attempt one delivery now (see the module docstring)."""
        row = await self._pool.fetchrow(_LOAD, request.delivery_id)
        if row is None:
            raise ApplicationError(
                f"no delivery {request.delivery_id}",
                type=PermanentEventError.__name__,
                non_retryable=True,
            )
        if row["status"] != DeliveryStatus.PENDING or row["cycle"] != request.cycle:
            return AttemptResult(Verdict.FINISHED, detail=f"delivery is {row['status']}")
        if row["channel"] == "email":
            return await self._record(row, request, await self._send(self._mail, row))
        refusal = await self._settle_if_not_sendable(row)
        if refusal is not None:
            return refusal
        endpoint_id: str = row["endpoint_id"]
        admission = await self._breaker.admit_known(
            self._pool,
            endpoint_id,
            row["circuit_open_until"],
            row["now"],
            lease_seconds=self._settings.delivery_timeout_seconds,
        )
        if not admission.allowed:
            return AttemptResult(
                Verdict.BACK_OFF, admission.wait_seconds, f"endpoint circuit {admission.reason}"
            )
        probe = admission.probe
        if self._in_flight[endpoint_id] >= self._settings.endpoint_max_in_flight:
            return AttemptResult(Verdict.BACK_OFF, BUSY_RETRY_SECONDS, "endpoint busy")
        self._in_flight[endpoint_id] += 1
        try:
            sent = await self._send(self._post, row)
        except WorkerBusy:
            return AttemptResult(Verdict.BACK_OFF, BUSY_RETRY_SECONDS, "worker busy")
        finally:
            self._in_flight[endpoint_id] -= 1
            if not self._in_flight[endpoint_id]:
                del self._in_flight[endpoint_id]
        return await self._record(row, request, sent, probe=probe)

    async def _send(
        self, send: Callable[[asyncpg.Record], Awaitable[Sent]], row: asyncpg.Record
    ) -> Sent:
        """Send, turning any unexpected error into a permanent failure of this delivery.

        Expected failures (network, timeouts, refusals, HTTP and SMTP answers) are results
        already; anything else comes from the delivery's own data (a header an email cannot
        carry, say) and would fail again, so retrying it would only re-send without end.
        """
        started_at = datetime.now(UTC)
        try:
            return await send(row)
        except WorkerBusy:
            raise
        except Exception as error:
            activity.logger.exception("delivery %s cannot be sent", row["id"])
            return Sent(started_at, 0.0, error=f"{type(error).__name__}: {error}", permanent=True)

    async def _settle_if_not_sendable(self, row: asyncpg.Record) -> AttemptResult | None:
        """Settle a webhook delivery that must not be sent now, and say why; None if it may.

        Deleted endpoint: cancelled. Disabled: dead-lettered (replayable after re-enabling).
        Paused: handed back to the relay until resumed. An earlier delivery of the lane still
        open: it goes first. (Whether the endpoint's circuit lets it through is asked next.)
        """
        status = row["endpoint_status"]
        if status == "deleted":
            async with self._pool.acquire() as conn, conn.transaction():
                await _settle(conn, row, DeliveryStatus.CANCELLED, "endpoint deleted")
            return AttemptResult(Verdict.FINISHED, detail="endpoint deleted")
        if status == "disabled":
            async with self._pool.acquire() as conn, conn.transaction():
                await _dead_letter(conn, row, "endpoint disabled")
            return AttemptResult(Verdict.FINISHED, detail="endpoint disabled")
        if status == "paused":
            # Clearing the lease too keeps the relay from marking it handed over afterwards.
            await self._pool.execute(
                "UPDATE deliveries SET dispatched_cycle = cycle - 1, relay_lease_until = NULL"
                " WHERE id = $1 AND cycle = $2",
                row["id"],
                row["cycle"],
            )
            return AttemptResult(Verdict.HELD, detail="endpoint paused")
        if row["waits_for"] is not None:
            return AttemptResult(Verdict.BLOCKED, detail=f"after {row['waits_for']}")
        return None

    async def _post(self, row: asyncpg.Record) -> Sent:
        body = webhook_body(
            row["event_type"],
            row["event_at"],
            row["event_data"],
            event_id=row["event_id"],
            seq=row["seq"],
        )
        return await post_webhook(
            self._http,
            row["url"],
            body,
            webhook_id=row["id"],
            secrets=row["secrets"],
            timeout=self._settings.delivery_timeout_seconds,
        )

    async def _mail(self, row: asyncpg.Record) -> Sent:
        context: dict[str, Any] = row["notice"] or _event_context(row)
        message = self._mailer.render(row["template"], row["recipient"], row["id"], context)
        started_at = datetime.now(UTC)
        clock = time.perf_counter()
        outcome = await self._mailer.send(message)
        return Sent(
            started_at,
            ms_since(clock),
            status_code=200 if outcome.delivered else None,
            error=outcome.error,
            permanent=outcome.permanent,
        )

    async def _record(
        self, row: asyncpg.Record, request: AttemptInput, sent: Sent, *, probe: bool = False
    ) -> AttemptResult:
        """Log the attempt and apply its consequences in one transaction."""
        gone = row["channel"] == "webhook" and sent.status_code == 410
        verdict = Verdict.DELIVERED if sent.delivered else Verdict.FAILED
        give_up = not sent.delivered and (request.final or gone or sent.permanent)
        error = sent.error or (None if sent.delivered else f"HTTP {sent.status_code}")
        head = sent.response[:RESPONSE_HEAD_BYTES].decode("utf-8", "replace")
        async with self._pool.acquire() as conn, conn.transaction():
            # Numbered from the log, not the lane: a re-send after a crash is logged as the
            # attempt it really was, and a lane that starts over never overwrites the log.
            attempt = await conn.fetchval(
                "INSERT INTO delivery_attempts (delivery_id, endpoint_id, attempt, cycle,"
                " scheduled_at, started_at, latency_ms, outcome, status_code, error,"
                " response_sha256, response_head)"
                " SELECT $1, $2, coalesce(max(attempt), 0) + 1, $3, $4, $5, $6, $7, $8, $9,"
                " $10, $11 FROM delivery_attempts WHERE delivery_id = $1 AND cycle = $3"
                " ON CONFLICT (delivery_id, cycle, attempt) DO NOTHING RETURNING attempt",
                row["id"],
                row["endpoint_id"],
                request.cycle,
                datetime.fromisoformat(request.scheduled_at),
                sent.started_at,
                sent.latency_ms,
                verdict,
                sent.status_code,
                error,
                hashlib.sha256(sent.response).digest() if sent.status_code else None,
                head.replace("\x00", "\ufffd") or None,
            )
            # The attempt log's "delivered" outcome records this pending → succeeded move.
            await conn.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_error = $3,"
                " last_attempt_at = clock_timestamp(),"
                " status = CASE WHEN $4 THEN $5 ELSE status END,"
                " finished_at = CASE WHEN $4 THEN clock_timestamp() ELSE finished_at END"
                " WHERE id = $1 AND cycle = $2 AND status = $6",
                row["id"],
                request.cycle,
                error,
                sent.delivered,
                DeliveryStatus.SUCCEEDED,
                DeliveryStatus.PENDING,
            )
            if give_up:
                reason = "endpoint answered 410 Gone" if gone else f"gave up: {error}"
                await _dead_letter(conn, row, reason)
            if row["channel"] == "webhook":
                health = EndpointHealth(conn, row["endpoint_id"], self._settings)
                if sent.delivered:
                    await health.succeeded()
                elif gone:
                    await health.disable("the endpoint answered 410 Gone")
                else:
                    await health.failed(error or "failed", probe=probe)
        DELIVERY_ATTEMPTS.labels(row["channel"], verdict).inc()
        DELIVERY_LATENCY.labels(row["channel"]).observe(sent.latency_ms / 1000)
        activity.logger.info(
            "delivery %s attempt %s: %s",
            row["id"],
            attempt,
            error or "delivered",
            extra={"event_id": row["event_id"]},
        )
        if sent.delivered:
            return AttemptResult(Verdict.DELIVERED)
        if give_up:
            return AttemptResult(Verdict.FINISHED, detail=error)
        return AttemptResult(Verdict.FAILED, sent.retry_after_seconds, error)


async def _settle(conn: Connection, row: asyncpg.Record, to: DeliveryStatus, reason: str) -> bool:
    """Move an open (pending) delivery to ``to`` and audit the move; False if it was not open."""
    DELIVERY_TRANSITIONS.check(DeliveryStatus.PENDING, to)
    settled = await conn.fetchval(
        "UPDATE deliveries SET status = $3, last_error = $2, finished_at = clock_timestamp()"
        " WHERE id = $1 AND status = $4 RETURNING id",
        row["id"],
        reason,
        to,
        DeliveryStatus.PENDING,
    )
    if settled is None:
        return False
    await audit(
        conn,
        DELIVERY_TRANSITIONS.entity,
        row["id"],
        DeliveryStatus.PENDING,
        to,
        actor="switchboard",
        reason=reason,
        event_id=row["event_id"],
    )
    return True


async def _dead_letter(conn: Connection, row: asyncpg.Record, reason: str) -> None:
    if not await _settle(conn, row, DeliveryStatus.DEAD_LETTERED, reason):
        return
    target = row["endpoint_id"] or f"email:{row['template']}"
    await raise_alert(
        conn,
        DELIVERY_EXHAUSTED,
        dedup_key=f"delivery_exhausted:{target}",
        summary=f"deliveries to {target} dead-lettered (latest {row['id']}: {reason})",
        details={
            "event_id": row["event_id"],
            "delivery_id": row["id"],
            "merchant_id": row["merchant_id"],
        },
    )


def _event_context(row: asyncpg.Record) -> dict[str, Any]:
    """What a receipt or sale notice shows about its payment event."""
    data: dict[str, Any] = row["event_data"]
    return {
        "amount": format_amount(data.get("amount", 0), data.get("currency", "")),
        "merchant_name": row["merchant_name"] or row["merchant_id"],
        "payment_id": data.get("payment_id", ""),
        "customer_email": data.get("customer_email"),
        "occurred_at": row["event_at"].strftime("%Y-%m-%d %H:%M UTC"),
        "event_id": row["event_id"],
        "seq": row["seq"],
    }
