"""Delivery activities: one attempt at one outbound webhook or email, and its bookkeeping.

An attempt first checks whether it should dial at all (delivered already, endpoint paused,
disabled or deleted, an earlier delivery of its lane still open, the endpoint's circuit open or
too many attempts already in flight to it). Then it sends: a Standard Webhooks POST signed with
every live secret of the endpoint, or an email over SMTP. Then, in one transaction, it logs the
attempt, moves the delivery on, and updates the endpoint's health: circuit breaker, the
"failing" alert, auto-disable after a long run of failures or at once on 410 Gone.

Sending happens before the transaction, so a crash between the two repeats the send with the
same ``webhook-id`` (receivers deduplicate on it) and never loses it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import asyncpg
import httpcore
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.email import Mailer, format_amount
from core.audit import audit, record_alert, resolve_alert
from core.contracts import AttemptInput, AttemptResult, Verdict
from core.db import Connection
from core.errors import DestinationRefused, PermanentEventError
from core.metrics import DELIVERY_ATTEMPTS, DELIVERY_LATENCY
from core.settings import Settings
from core.signing import sign_headers

__all__ = [
    "DELIVERIES_CHANNEL",
    "DeliveryActivities",
    "delivery_id",
    "plan_deliveries",
    "webhook_body",
]

DELIVERIES_CHANNEL = "switchboard_deliveries"

USER_AGENT = b"Switchboard-Webhooks/0.1"
# Enough of a response body to show an operator what the receiver said.
RESPONSE_HEAD_BYTES = 1024
RESPONSE_READ_CAP = 64 * 1024
# A receiver cannot push a retry further out than the longest step of the schedule.
MAX_RETRY_AFTER_SECONDS = 36000.0
# How long an attempt waits for a free connection of the worker's pool before backing off.
POOL_WAIT_SECONDS = 1.0
# The half-open probe holds the circuit for its timeout plus this, so no second probe starts.
PROBE_LEASE_MARGIN_SECONDS = 5.0
# A busy endpoint is asked again after about this long (jittered by the lane).
BUSY_RETRY_SECONDS = 1.0

_LOAD = """
SELECT d.id, d.event_id, d.merchant_id, d.seq, d.channel, d.endpoint_id, d.recipient,
       d.template, d.notice, d.lane, d.status, d.cycle,
       e.type AS event_type, e.data AS event_data, e.created_at AS event_at,
       ep.url, ep.status AS endpoint_status, ep.circuit_open_until,
       m.name AS merchant_name, clock_timestamp() AS now,
       (SELECT p.id FROM deliveries p WHERE p.lane = d.lane AND p.status = 'pending'
        AND p.seq < d.seq LIMIT 1) AS waits_for,
       array(SELECT s.secret FROM endpoint_secrets s WHERE s.endpoint_id = d.endpoint_id
             AND (s.expires_at IS NULL OR s.expires_at > clock_timestamp())
             ORDER BY s.id DESC) AS secrets
FROM deliveries d
LEFT JOIN events e ON e.event_id = d.event_id
LEFT JOIN endpoints ep ON ep.id = d.endpoint_id
LEFT JOIN merchants m ON m.id = d.merchant_id
WHERE d.id = $1
"""


@dataclass(frozen=True)
class _Sent:
    """What happened on the wire during one attempt."""

    started_at: datetime
    latency_ms: float
    status_code: int | None = None
    error: str | None = None
    response: bytes = b""
    retry_after_seconds: float | None = None
    permanent: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300 and not self.error


def webhook_body(
    event_type: str, occurred_at: datetime, data: dict[str, Any], **extra: Any
) -> bytes:
    """The Standard Webhooks payload ``{type, timestamp, data}``; identical on every attempt."""
    payload = {"type": event_type, "timestamp": occurred_at.isoformat(), "data": {**data, **extra}}
    return json.dumps(payload, separators=(",", ":")).encode()


def delivery_id(event_id: str, destination: str) -> str:
    """The ``webhook-id`` of one event to one destination: the same on every attempt and replay."""
    digest = hashlib.sha256(f"{event_id}|{destination}".encode()).digest()
    return "msg_" + base64.b32encode(digest).decode().rstrip("=").lower()[:26]


async def plan_deliveries(
    conn: Connection,
    *,
    event_id: str,
    event_type: str,
    merchant_id: str,
    seq: int,
    entity: str,
    data: dict[str, Any],
) -> int:
    """Record, in the caller's ledger transaction, every delivery a new merchant event needs.

    Webhooks go to each of the merchant's endpoints subscribed to the type (paused ones too:
    they are held until resumed; disabled ones get a dead letter to replay once re-enabled);
    the lane is endpoint + entity, so one entity's events reach an endpoint in order. A
    successful payment also mails a receipt to the customer (when the partner gave an address)
    and a sale notice to the merchant (when it has one).
    """
    planned: list[_Planned] = []
    endpoints = await conn.fetch(
        "SELECT id, status FROM endpoints WHERE merchant_id = $1"
        " AND status IN ('active', 'paused', 'disabled')"
        " AND (event_types IS NULL OR $2 = ANY (event_types))",
        merchant_id,
        event_type,
    )
    for endpoint in endpoints:
        planned.append(
            _Planned(
                id=delivery_id(event_id, endpoint["id"]),
                lane=f"{endpoint['id']}|{entity}",
                endpoint_id=endpoint["id"],
                # Kept as a dead letter, so it can be replayed once the endpoint is re-enabled.
                disabled=endpoint["status"] == "disabled",
            )
        )
    if event_type == "payment.succeeded":
        merchant_email = await conn.fetchval(
            "SELECT email FROM merchants WHERE id = $1", merchant_id
        )
        for template, recipient in (
            ("receipt", data.get("customer_email")),
            ("sale_notice", merchant_email),
        ):
            if recipient:
                mail_id = delivery_id(event_id, f"email:{template}:{recipient}")
                planned.append(
                    _Planned(mail_id, f"email|{mail_id}", recipient=recipient, template=template)
                )
    if not planned:
        return 0
    await conn.executemany(
        "INSERT INTO deliveries (id, event_id, merchant_id, seq, channel, endpoint_id, recipient,"
        " template, lane, status, last_error, finished_at, dispatched_cycle)"
        " VALUES ($1, $2, $3, $4, CASE WHEN $5::text IS NULL THEN 'email' ELSE 'webhook' END,"
        " $5, $6, $7, $8, CASE WHEN $9 THEN 'dead_lettered' ELSE 'pending' END,"
        " CASE WHEN $9 THEN 'endpoint disabled' END, CASE WHEN $9 THEN clock_timestamp() END,"
        " CASE WHEN $9 THEN 0 ELSE -1 END) ON CONFLICT (id) DO NOTHING",
        [
            (
                plan.id,
                event_id,
                merchant_id,
                seq,
                plan.endpoint_id,
                plan.recipient,
                plan.template,
                plan.lane,
                plan.disabled,
            )
            for plan in planned
        ],
    )
    await conn.execute("SELECT pg_notify($1, '')", DELIVERIES_CHANNEL)
    return len(planned)


@dataclass(frozen=True)
class _Planned:
    """One delivery a new merchant event needs: to an endpoint, or an email to a recipient."""

    id: str
    lane: str
    endpoint_id: str | None = None
    recipient: str | None = None
    template: str | None = None
    disabled: bool = False


class _WorkerBusy(Exception):
    """Every connection of this worker's HTTP pool is taken: not the endpoint's fault."""


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
        if row["status"] != "pending" or row["cycle"] != request.cycle:
            return AttemptResult(Verdict.FINISHED, detail=f"delivery is {row['status']}")
        if row["channel"] == "email":
            return await self._record(row, request, await self._send(self._mail, row))
        refusal = await self._settle_if_not_sendable(row)
        if refusal is not None:
            return refusal
        probe = await self._claim_probe_if_half_open(row)
        if isinstance(probe, AttemptResult):
            return probe
        endpoint_id: str = row["endpoint_id"]
        if self._in_flight[endpoint_id] >= self._settings.endpoint_max_in_flight:
            return AttemptResult(Verdict.BACK_OFF, BUSY_RETRY_SECONDS, "endpoint busy")
        self._in_flight[endpoint_id] += 1
        try:
            sent = await self._send(self._post, row)
        except _WorkerBusy:
            return AttemptResult(Verdict.BACK_OFF, BUSY_RETRY_SECONDS, "worker busy")
        finally:
            self._in_flight[endpoint_id] -= 1
            if not self._in_flight[endpoint_id]:
                del self._in_flight[endpoint_id]
        return await self._record(row, request, sent, probe=probe)

    async def _send(
        self, send: Callable[[asyncpg.Record], Awaitable[_Sent]], row: asyncpg.Record
    ) -> _Sent:
        """Send, turning any unexpected error into a permanent failure of this delivery.

        Expected failures (network, timeouts, refusals, HTTP and SMTP answers) are results
        already; anything else comes from the delivery's own data (a header an email cannot
        carry, say) and would fail again, so retrying it would only re-send without end.
        """
        started_at = datetime.now(UTC)
        try:
            return await send(row)
        except _WorkerBusy:
            raise
        except Exception as error:
            activity.logger.exception("delivery %s cannot be sent", row["id"])
            return _Sent(started_at, 0.0, error=f"{type(error).__name__}: {error}", permanent=True)

    async def _settle_if_not_sendable(self, row: asyncpg.Record) -> AttemptResult | None:
        """Settle a webhook delivery that must not be sent now, and say why; None if it may.

        Deleted endpoint: cancelled. Disabled: dead-lettered (replayable after re-enabling).
        Paused: handed back to the relay until resumed. An earlier delivery of the lane still
        open: it goes first. Circuit open: wait for the probe.
        """
        status = row["endpoint_status"]
        if status == "deleted":
            await self._cancel(row, "endpoint deleted")
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
        open_until: datetime | None = row["circuit_open_until"]
        if open_until is not None and open_until > row["now"]:
            wait = (open_until - row["now"]).total_seconds()
            return AttemptResult(Verdict.BACK_OFF, wait, "endpoint circuit open")
        return None

    async def _claim_probe_if_half_open(self, row: asyncpg.Record) -> bool | AttemptResult:
        """Whether this attempt is the half-open circuit's one probe (or why it must wait)."""
        if row["circuit_open_until"] is None:
            return False
        claimed = await self._pool.fetchval(
            "UPDATE endpoints SET circuit_open_until ="
            " clock_timestamp() + make_interval(secs => $2)"
            " WHERE id = $1 AND circuit_open_until <= clock_timestamp() RETURNING id",
            row["endpoint_id"],
            self._settings.delivery_timeout_seconds + PROBE_LEASE_MARGIN_SECONDS,
        )
        if claimed is None:
            return AttemptResult(Verdict.BACK_OFF, BUSY_RETRY_SECONDS, "endpoint circuit probing")
        return True

    async def _post(self, row: asyncpg.Record) -> _Sent:
        body = webhook_body(
            row["event_type"],
            row["event_at"],
            row["event_data"],
            event_id=row["event_id"],
            seq=row["seq"],
        )
        headers = [
            (name.encode(), value.encode())
            for name, value in sign_headers(
                row["secrets"], row["id"], body, now=int(time.time())
            ).items()
        ]
        headers += [
            (b"content-type", b"application/json"),
            (b"user-agent", USER_AGENT),
        ]
        started_at = datetime.now(UTC)
        clock = time.perf_counter()
        try:
            async with asyncio.timeout(self._settings.delivery_timeout_seconds):
                async with self._http.stream(
                    "POST",
                    row["url"],
                    headers=headers,
                    content=body,
                    extensions={"timeout": {"pool": POOL_WAIT_SECONDS}},
                ) as r:
                    response = await _read_capped(r)
        except httpcore.PoolTimeout as error:
            raise _WorkerBusy from error
        except DestinationRefused as error:
            return _Sent(started_at, _ms_since(clock), error=str(error))
        except TimeoutError:
            timeout = self._settings.delivery_timeout_seconds
            return _Sent(started_at, _ms_since(clock), error=f"timed out after {timeout:g}s")
        except (
            httpcore.ProtocolError,
            httpcore.NetworkError,
            httpcore.TimeoutException,
            httpcore.UnsupportedProtocol,
        ) as e:
            return _Sent(started_at, _ms_since(clock), error=f"{type(e).__name__}: {e}")
        return _Sent(
            started_at,
            _ms_since(clock),
            status_code=r.status,
            response=response,
            retry_after_seconds=_retry_after(r) if r.status in (429, 503) else None,
        )

    async def _mail(self, row: asyncpg.Record) -> _Sent:
        context: dict[str, Any] = row["notice"] or _event_context(row)
        message = self._mailer.render(row["template"], row["recipient"], row["id"], context)
        started_at = datetime.now(UTC)
        clock = time.perf_counter()
        outcome = await self._mailer.send(message)
        return _Sent(
            started_at,
            _ms_since(clock),
            status_code=200 if outcome.delivered else None,
            error=outcome.error,
            permanent=outcome.permanent,
        )

    async def _record(
        self, row: asyncpg.Record, request: AttemptInput, sent: _Sent, *, probe: bool = False
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
            await conn.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_error = $3,"
                " last_attempt_at = clock_timestamp(),"
                " status = CASE WHEN $4 THEN 'succeeded' ELSE status END,"
                " finished_at = CASE WHEN $4 THEN clock_timestamp() ELSE finished_at END"
                " WHERE id = $1 AND cycle = $2 AND status = 'pending'",
                row["id"],
                request.cycle,
                error,
                sent.delivered,
            )
            if give_up:
                reason = "endpoint answered 410 Gone" if gone else f"gave up: {error}"
                await _dead_letter(conn, row, reason)
            if row["channel"] == "webhook":
                health = _EndpointHealth(conn, row["endpoint_id"], self._settings)
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

    async def _cancel(self, row: asyncpg.Record, reason: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            cancelled = await conn.fetchval(
                "UPDATE deliveries SET status = 'cancelled', last_error = $2, finished_at ="
                " clock_timestamp() WHERE id = $1 AND status = 'pending' RETURNING id",
                row["id"],
                reason,
            )
            if cancelled is not None:
                await audit(
                    conn,
                    "delivery",
                    row["id"],
                    "pending",
                    "cancelled",
                    actor="switchboard",
                    reason=reason,
                    event_id=row["event_id"],
                )


async def _dead_letter(conn: Connection, row: asyncpg.Record, reason: str) -> None:
    updated = await conn.fetchval(
        "UPDATE deliveries SET status = 'dead_lettered', last_error = $2,"
        " finished_at = clock_timestamp() WHERE id = $1 AND status = 'pending' RETURNING id",
        row["id"],
        reason,
    )
    if updated is None:
        return
    await audit(
        conn,
        "delivery",
        row["id"],
        "pending",
        "dead_lettered",
        actor="switchboard",
        reason=reason,
        event_id=row["event_id"],
    )
    target = row["endpoint_id"] or f"email:{row['template']}"
    await record_alert(
        conn,
        dedup_key=f"delivery_exhausted:{target}",
        kind="delivery_exhausted",
        severity="medium",
        summary=f"deliveries to {target} dead-lettered (latest {row['id']}: {reason})",
        details={
            "event_id": row["event_id"],
            "delivery_id": row["id"],
            "merchant_id": row["merchant_id"],
        },
    )


class _EndpointHealth:
    """Circuit breaker, failing alert and auto-disable of one endpoint, inside a transaction."""

    def __init__(self, conn: Connection, endpoint_id: str, settings: Settings) -> None:
        self.conn = conn
        self.endpoint_id = endpoint_id
        self.settings = settings

    async def succeeded(self) -> None:
        was_failing = await self.conn.fetchval(
            "WITH before AS (SELECT consecutive_failures FROM endpoints WHERE id = $1"
            " AND (consecutive_failures > 0 OR circuit_open_until IS NOT NULL) FOR UPDATE)"
            " UPDATE endpoints SET consecutive_failures = 0, failing_since = NULL,"
            " circuit_open_until = NULL, circuit_trips = 0, last_success_at = now()"
            " FROM before WHERE id = $1 RETURNING before.consecutive_failures",
            self.endpoint_id,
        )
        if was_failing is None:
            # Healthy already: refresh the success time at most once a second (hot row).
            await self.conn.execute(
                "UPDATE endpoints SET last_success_at = now() WHERE id = $1 AND"
                " (last_success_at IS NULL OR last_success_at < now() - interval '1 second')",
                self.endpoint_id,
            )
            return
        await resolve_alert(
            self.conn, f"endpoint_failing:{self.endpoint_id}", reason="a delivery succeeded"
        )

    async def failed(self, error: str, *, probe: bool) -> None:
        """Count a failure; the circuit opens when the streak reaches the threshold while it
        is closed, or when its probe fails (each re-opening waits twice as long)."""
        settings = self.settings
        row = await self.conn.fetchrow(
            "WITH opens AS (SELECT consecutive_failures + 1 >= $2"
            " AND (circuit_open_until IS NULL OR $5) AS yes FROM endpoints WHERE id = $1)"
            " UPDATE endpoints SET consecutive_failures = consecutive_failures + 1,"
            " failing_since = coalesce(failing_since, now()), last_failure_at = now(),"
            " circuit_open_until = CASE WHEN opens.yes"
            "   THEN clock_timestamp() + make_interval(secs => least($3 * 2 ^ circuit_trips, $4))"
            "   ELSE circuit_open_until END,"
            " circuit_trips = circuit_trips + opens.yes::int"
            " FROM opens WHERE id = $1"
            " RETURNING consecutive_failures, failing_since, status, merchant_id, url",
            self.endpoint_id,
            settings.circuit_failure_threshold,
            settings.circuit_cooldown_seconds,
            settings.circuit_max_cooldown_seconds,
            probe,
        )
        if row is None:
            return
        if row["consecutive_failures"] == settings.endpoint_failing_alert_after:
            await record_alert(
                self.conn,
                dedup_key=f"endpoint_failing:{self.endpoint_id}",
                kind="endpoint_failing",
                severity="medium",
                summary=f"endpoint {self.endpoint_id} ({row['url']}) failed"
                f" {row['consecutive_failures']} times in a row: {error}",
                details={"endpoint_id": self.endpoint_id, "merchant_id": row["merchant_id"]},
            )
        failing_for = datetime.now(UTC) - row["failing_since"]
        if failing_for >= timedelta(seconds=settings.endpoint_disable_after_seconds):
            await self.disable(
                f"failing without a success since {row['failing_since']:%Y-%m-%d %H:%M}"
            )

    async def disable(self, reason: str) -> None:
        row = await self.conn.fetchrow(
            "UPDATE endpoints SET status = 'disabled', status_reason = $2, updated_at = now()"
            " WHERE id = $1 AND status IN ('active', 'paused') RETURNING merchant_id, url",
            self.endpoint_id,
            reason,
        )
        if row is None:
            return
        await audit(
            self.conn,
            "endpoint",
            self.endpoint_id,
            "active",
            "disabled",
            actor="switchboard",
            reason=reason,
        )
        await _notify_merchant_of_disabled_endpoint(
            self.conn, self.endpoint_id, row["merchant_id"], row["url"], reason
        )
        await record_alert(
            self.conn,
            dedup_key=f"endpoint_disabled:{self.endpoint_id}",
            kind="endpoint_disabled",
            severity="high",
            summary=f"endpoint {self.endpoint_id} ({row['url']}) disabled: {reason}",
            details={"endpoint_id": self.endpoint_id, "merchant_id": row["merchant_id"]},
        )


async def _read_capped(response: httpcore.Response) -> bytes:
    """Read at most ``RESPONSE_READ_CAP`` bytes of a response body, then stop reading."""
    head = bytearray()
    async for chunk in response.aiter_stream():
        head += chunk
        if len(head) >= RESPONSE_READ_CAP:
            break
    return bytes(head[:RESPONSE_READ_CAP])


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


async def _notify_merchant_of_disabled_endpoint(
    conn: Connection, endpoint_id: str, merchant_id: str, url: str, reason: str
) -> None:
    """Queue an email telling the merchant (when it has an address) its endpoint was disabled."""
    email = await conn.fetchval("SELECT email FROM merchants WHERE id = $1", merchant_id)
    if not email:
        return
    disabled_at = await conn.fetchval("SELECT clock_timestamp()")
    notice_id = delivery_id(f"endpoint_disabled:{endpoint_id}:{disabled_at.isoformat()}", email)
    await conn.execute(
        "INSERT INTO deliveries (id, merchant_id, seq, channel, recipient, template, notice, lane)"
        " VALUES ($1, $2, 0, 'email', $3, 'endpoint_disabled', $4, $5)",
        notice_id,
        merchant_id,
        email,
        {
            "endpoint_id": endpoint_id,
            "url": url,
            "reason": reason,
            "disabled_at": disabled_at.strftime("%Y-%m-%d %H:%M UTC"),
        },
        f"email|{notice_id}",
    )
    await conn.execute("SELECT pg_notify($1, '')", DELIVERIES_CHANNEL)


def _retry_after(response: httpcore.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), if it has a valid one."""
    for name, value in response.headers:
        if name.lower() != b"retry-after":
            continue
        text = value.decode("latin-1").strip()
        if text.isascii() and text.isdigit():
            return min(float(text), MAX_RETRY_AFTER_SECONDS)
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
        return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)
    return None


def _ms_since(clock: float) -> float:
    return (time.perf_counter() - clock) * 1000
