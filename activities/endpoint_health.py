"""Endpoint health, updated in each webhook attempt's transaction: the endpoint's circuit
breaker (:mod:`activities.circuit_breaker`), the "failing" alert, auto-disable (after a long run
of failures, or at once on 410 Gone) and the email telling the merchant its endpoint was disabled.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from activities.circuit_breaker import ENDPOINTS, CircuitBreaker
from core.alerting import Severity, alert_kind
from core.audit import audit, raise_alert, resolve_alert
from core.db import Connection
from core.outbox import plan_notice
from core.settings import Settings

__all__ = ["EndpointHealth"]

ENDPOINT_FAILING = alert_kind(
    "endpoint_failing",
    Severity.WARNING,
    "A merchant endpoint failed several deliveries in a row (resolved by its next success).",
)
ENDPOINT_DISABLED = alert_kind(
    "endpoint_disabled",
    Severity.ERROR,
    "A merchant endpoint was disabled (410 Gone, or failing for days); the merchant was told.",
)


class EndpointHealth:
    """Circuit breaker, failing alert and auto-disable of one endpoint, inside a transaction."""

    def __init__(self, conn: Connection, endpoint_id: str, settings: Settings) -> None:
        self.conn = conn
        self.endpoint_id = endpoint_id
        self.settings = settings
        self.breaker = CircuitBreaker(ENDPOINTS, settings)

    async def succeeded(self) -> None:
        if not await self.breaker.succeeded(self.conn, self.endpoint_id):
            # Healthy already: refresh the success time at most once a second (hot row).
            await self.conn.execute(
                "UPDATE endpoints SET last_success_at = now() WHERE id = $1 AND"
                " (last_success_at IS NULL OR last_success_at < now() - interval '1 second')",
                self.endpoint_id,
            )
            return
        await self.conn.execute(
            "UPDATE endpoints SET failing_since = NULL, last_success_at = now() WHERE id = $1",
            self.endpoint_id,
        )
        await resolve_alert(
            self.conn, f"endpoint_failing:{self.endpoint_id}", reason="a delivery succeeded"
        )

    async def failed(self, error: str, *, probe: bool) -> None:
        """Count a failure on the endpoint's circuit breaker (``probe``: this attempt was its
        half-open probe), raise the failing alert, and disable an endpoint failing for days."""
        settings = self.settings
        streak = await self.breaker.failed(self.conn, self.endpoint_id, probe=probe)
        if streak is None:
            return
        row = await self.conn.fetchrow(
            "UPDATE endpoints SET failing_since = coalesce(failing_since, now()),"
            " last_failure_at = now() WHERE id = $1"
            " RETURNING failing_since, status, merchant_id, url",
            self.endpoint_id,
        )
        if row is None:
            return
        if streak == settings.endpoint_failing_alert_after:
            await raise_alert(
                self.conn,
                ENDPOINT_FAILING,
                dedup_key=f"endpoint_failing:{self.endpoint_id}",
                summary=f"endpoint {self.endpoint_id} ({row['url']}) failed"
                f" {streak} times in a row: {error}",
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
        await raise_alert(
            self.conn,
            ENDPOINT_DISABLED,
            dedup_key=f"endpoint_disabled:{self.endpoint_id}",
            summary=f"endpoint {self.endpoint_id} ({row['url']}) disabled: {reason}",
            details={"endpoint_id": self.endpoint_id, "merchant_id": row["merchant_id"]},
        )


async def _notify_merchant_of_disabled_endpoint(
    conn: Connection, endpoint_id: str, merchant_id: str, url: str, reason: str
) -> None:
    """Queue an email telling the merchant (when it has an address) its endpoint was disabled."""
    email = await conn.fetchval("SELECT email FROM merchants WHERE id = $1", merchant_id)
    if not email:
        return
    disabled_at = await conn.fetchval("SELECT clock_timestamp()")
    await plan_notice(
        conn,
        merchant_id=merchant_id,
        recipient=email,
        template="endpoint_disabled",
        key=f"endpoint_disabled:{endpoint_id}:{disabled_at.isoformat()}",
        context={
            "endpoint_id": endpoint_id,
            "url": url,
            "reason": reason,
            "disabled_at": disabled_at.strftime("%Y-%m-%d %H:%M UTC"),
        },
    )
