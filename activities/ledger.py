"""Ledger activities: the only place business state is written.

Each method is one Postgres transaction and is idempotent under at-least-once execution: the
webhook row is locked first, and a row already in a final state returns what it did the first
time instead of doing it again. The per-entity advisory lock plus the "earlier open event" check
make events of one entity take effect in arrival order, except that a refund whose payment has
not arrived steps aside (``waiting``) so the payment can pass it.

Tenancy is checked first: an event for a merchant its partner is not linked to is parked
(``unlinked_merchant``) and replayed when an operator links them. An error that no retry can cure
(invalid stored data, a value Postgres refuses: :func:`core.db.is_permanent`) parks the event
where it happens, so it never occupies the pipeline retrying.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from core.alerting import Severity, alert_kind
from core.audit import audit, raise_alert
from core.contracts import (
    WEBHOOK_TRANSITIONS,
    ApplyInput,
    ApplyResult,
    DeadLetterCause,
    EventType,
    Outcome,
    ParkInput,
    WebhookStatus,
)
from core.db import Connection, is_permanent
from core.errors import PermanentEventError
from core.events import (
    MODELS,
    BalanceUpdated,
    PaymentFailed,
    PaymentSucceeded,
    RefundSucceeded,
)
from core.merchant_events import append_merchant_event
from core.metrics import EVENTS_APPLIED
from core.outbox import plan_deliveries
from core.tenancy import onboard_merchant, unlinked_merchant_alert_key

__all__ = ["PREDECESSOR_PENDING", "LedgerActivities"]

PREDECESSOR_PENDING = "PredecessorPending"

MONEY_EVENT_TYPES = (
    EventType.PAYMENT_SUCCEEDED,
    EventType.PAYMENT_FAILED,
    EventType.REFUND_SUCCEEDED,
)
MONEY_EVENT_PARKED = alert_kind(
    "money_event_dead_lettered",
    Severity.CRITICAL,
    "A payment or refund could not be processed and was parked as a dead letter.",
)
EVENT_PARKED = alert_kind(
    "event_dead_lettered", Severity.WARNING, "A balance update could not be applied and was parked."
)
REFUND_WITHOUT_PAYMENT = alert_kind(
    "refund_without_payment",
    Severity.ERROR,
    "A refund's payment never arrived within the dependency window; the refund is parked.",
)
UNLINKED_MERCHANT = alert_kind(
    "unlinked_merchant",
    Severity.ERROR,
    "A partner sends webhooks for a merchant it is not linked to; they are parked until linked.",
)

_FINAL = (WebhookStatus.PROCESSED, WebhookStatus.IGNORED, WebhookStatus.DEAD_LETTERED)
_REFUNDABLE = ("succeeded", "partially_refunded")

Row = asyncpg.Record


class LedgerActivities:
    """Applies recorded webhooks to payments, refunds and balances, with audit and events log."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn(name="apply_event")
    async def apply_event(self, request: ApplyInput) -> ApplyResult:
        """Apply one recorded event in a single transaction, or report why it must wait."""
        try:
            result = await self._apply(request)
        except (asyncpg.PostgresError, ValidationError) as error:
            if not (isinstance(error, ValidationError) or is_permanent(error)):
                raise
            # No retry can cure it: park the event now rather than retry it forever.
            reason = f"cannot take effect: {_describe(error)}"
            await self.park_event(ParkInput(request.event_id, reason))
            result = ApplyResult(outcome=Outcome.DEAD_LETTERED)
        EVENTS_APPLIED.labels(result.outcome).inc()
        activity.logger.info(
            "event %s: %s",
            request.event_id,
            result.outcome,
            extra={"event_id": request.event_id, "outcome": str(result.outcome)},
        )
        return result

    async def _apply(self, request: ApplyInput) -> ApplyResult:
        async with self._pool.acquire() as conn, conn.transaction():
            hook = await conn.fetchrow(
                "SELECT id, event_id, partner_id, webhook_id, event_type, entity_key, payload,"
                " status FROM webhooks WHERE event_id = $1",
                request.event_id,
            )
            if hook is None:
                raise ApplicationError(
                    f"no recorded webhook {request.event_id}",
                    type=PermanentEventError.__name__,
                    non_retryable=True,
                )
            if hook["entity_key"] is not None:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                    f"{hook['partner_id']}|{hook['entity_key']}",
                )
            hook = await conn.fetchrow(
                "SELECT id, event_id, partner_id, webhook_id, event_type, entity_key, payload,"
                " status FROM webhooks WHERE event_id = $1 FOR UPDATE",
                request.event_id,
            )
            assert hook is not None
            if hook["status"] in _FINAL:
                result = await _repeat_result(conn, hook)
            else:
                workflow_id = activity.info().workflow_id
                application = _Application(conn, hook, request.park_if_waiting, workflow_id)
                result = await application.run()
        return result

    @activity.defn(name="park_event")
    async def park_event(self, request: ParkInput) -> None:
        """Dead-letter an event that can never take effect (idempotent)."""
        async with self._pool.acquire() as conn, conn.transaction():
            hook = await conn.fetchrow(
                "SELECT id, event_id, partner_id, webhook_id, event_type, entity_key, payload,"
                " status FROM webhooks WHERE event_id = $1 FOR UPDATE",
                request.event_id,
            )
            if hook is None or hook["status"] in _FINAL:
                return
            await _dead_letter(conn, hook, request.reason, DeadLetterCause.OTHER)


async def _repeat_result(conn: Connection, hook: Row) -> ApplyResult:
    """What a finished event did, for an activity attempt that runs after it committed."""
    produced = await conn.fetchval("SELECT 1 FROM events WHERE event_id = $1", hook["event_id"])
    wake = await _waiting_workflows(conn, hook) if produced else []
    outcome = {
        WebhookStatus.IGNORED: Outcome.IGNORED,
        WebhookStatus.DEAD_LETTERED: Outcome.DEAD_LETTERED,
    }.get(hook["status"], Outcome.APPLIED if produced else Outcome.UNCHANGED)
    return ApplyResult(outcome=outcome, publish=bool(produced), wake_workflow_ids=wake)


async def _waiting_workflows(conn: Connection, hook: Row) -> list[str]:
    if hook["entity_key"] is None:
        return []
    rows = await conn.fetch(
        "SELECT workflow_id FROM webhooks WHERE partner_id = $1 AND entity_key = $2"
        " AND status = 'waiting' AND workflow_id IS NOT NULL ORDER BY id",
        hook["partner_id"],
        hook["entity_key"],
    )
    return [row["workflow_id"] for row in rows]


def _describe(error: BaseException) -> str:
    """A short, storable account of why an event cannot take effect."""
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "data"
        text = f"invalid data.{where}: {first['msg']}"
    else:
        text = f"{type(error).__name__} ({getattr(error, 'sqlstate', '?')}): {error}"
    return text.replace("\x00", "")[:500]


async def _dead_letter(conn: Connection, hook: Row, reason: str, cause: DeadLetterCause) -> None:
    reason = reason.replace("\x00", "")
    WEBHOOK_TRANSITIONS.check(hook["status"], WebhookStatus.DEAD_LETTERED)
    await conn.execute(
        "INSERT INTO dead_letters (event_id, reason, cause) VALUES ($1, $2, $3)"
        " ON CONFLICT (event_id) DO UPDATE SET reason = EXCLUDED.reason,"
        " cause = EXCLUDED.cause, created_at = clock_timestamp(), replayed_at = NULL",
        hook["event_id"],
        reason,
        cause,
    )
    await conn.execute(
        "UPDATE webhooks SET status = $3, processed_at = clock_timestamp(),"
        " detail = $2 WHERE event_id = $1",
        hook["event_id"],
        reason,
        WebhookStatus.DEAD_LETTERED,
    )
    await audit(
        conn,
        "webhook",
        hook["event_id"],
        hook["status"],
        WebhookStatus.DEAD_LETTERED,
        actor="switchboard",
        reason=reason,
        event_id=hook["event_id"],
    )
    summary = f"{hook['event_type']} {hook['event_id']} parked: {reason}"
    details = {"event_id": hook["event_id"], "partner_id": hook["partner_id"]}
    if cause == DeadLetterCause.UNLINKED_MERCHANT:
        merchant = hook["payload"]["data"]["merchant_id"]
        # One alert per (partner, merchant) pair, counting its webhooks, not one per webhook.
        await raise_alert(
            conn,
            UNLINKED_MERCHANT,
            dedup_key=unlinked_merchant_alert_key(hook["partner_id"], merchant),
            summary=f"partner {hook['partner_id']} sent webhooks for merchant {merchant},"
            " which it is not linked to; they are parked until an operator links them",
            details={**details, "merchant_id": merchant},
        )
        return
    if cause == DeadLetterCause.PAYMENT_NEVER_ARRIVED:
        kind = REFUND_WITHOUT_PAYMENT
    elif hook["event_type"] in MONEY_EVENT_TYPES:
        kind = MONEY_EVENT_PARKED
    else:
        kind = EVENT_PARKED
    await raise_alert(
        conn, kind, dedup_key=f"dead_letter:{hook['event_id']}", summary=summary, details=details
    )


class _Application:
    """Applies one open webhook row inside the caller's transaction."""

    def __init__(
        self, conn: Connection, hook: Row, park_if_waiting: bool, workflow_id: str | None
    ) -> None:
        self.conn = conn
        self.workflow_id = workflow_id
        self.hook = hook
        self.park_if_waiting = park_if_waiting
        self.partner_id: str = hook["partner_id"]
        self.event_id: str = hook["event_id"]
        self.actor = f"partner:{self.partner_id}"
        self.reason = f"webhook {hook['webhook_id']}"

    async def run(self) -> ApplyResult:
        event_type: str = self.hook["event_type"]
        model = MODELS.get(event_type)
        if model is None:
            await self._finish(WebhookStatus.IGNORED, "unknown event type, stored as received")
            return ApplyResult(outcome=Outcome.IGNORED)
        data = model.model_validate(self.hook["payload"]["data"])
        if not await self._partner_may_write(data.merchant_id):
            return await self._park(
                f"partner {self.partner_id} is not linked to merchant {data.merchant_id}",
                DeadLetterCause.UNLINKED_MERCHANT,
            )
        if isinstance(data, BalanceUpdated):
            return await self._balance_updated(data)
        assert isinstance(data, PaymentSucceeded | PaymentFailed | RefundSucceeded)
        payment = await self.conn.fetchrow(
            "SELECT * FROM payments WHERE partner_id = $1 AND payment_id = $2 FOR UPDATE",
            self.partner_id,
            data.payment_id,
        )
        await self._wait_for_earlier_events(payment_known=payment is not None)
        if isinstance(data, PaymentSucceeded):
            return await self._payment_succeeded(data, payment)
        if isinstance(data, PaymentFailed):
            return await self._payment_failed(data, payment)
        return await self._refund_succeeded(data, payment)

    async def _partner_may_write(self, merchant_id: str) -> bool:
        """Whether this partner processes for the merchant: linked by an operator, or onboarded
        now because the partner onboards merchants on first sight and no other partner has it."""
        access = await self.conn.fetchrow(
            "SELECT EXISTS (SELECT 1 FROM merchant_partners WHERE merchant_id = $1"
            " AND partner_id = $2) AS linked,"
            " (SELECT auto_onboard_merchants FROM partners WHERE id = $2) AS auto_onboard",
            merchant_id,
            self.partner_id,
        )
        assert access is not None
        if access["linked"]:
            return True
        if not access["auto_onboard"]:
            return False
        return await onboard_merchant(
            self.conn,
            merchant_id,
            self.partner_id,
            actor="switchboard",
            reason=f"first webhook from {self.partner_id}, which onboards new merchants",
            event_id=self.event_id,
        )

    async def _payment_on_its_way(self) -> bool:
        """Whether a payment event of this entity was received but has not taken effect yet.

        Then the window ran out only because the pipeline was behind (a long Temporal outage,
        say): the refund keeps waiting instead of being parked.
        """
        pending = await self.conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM webhooks WHERE partner_id = $1 AND entity_key = $2"
            " AND status IN ('received', 'started') AND event_type LIKE 'payment.%')",
            self.partner_id,
            self.hook["entity_key"],
        )
        return bool(pending)

    async def _wait_for_earlier_events(self, *, payment_known: bool) -> None:
        """Raise a retryable error while an earlier event of this entity is still open.

        Refunds waiting for a payment that has not arrived do not hold later events back;
        once the payment is known they queue like everything else.
        """
        earlier = await self.conn.fetchval(
            "SELECT event_id FROM webhooks WHERE partner_id = $1 AND entity_key = $2 AND id < $3"
            " AND status IN ('received', 'started', 'waiting')"
            " AND ($4 OR event_type <> 'refund.succeeded') ORDER BY id LIMIT 1",
            self.partner_id,
            self.hook["entity_key"],
            self.hook["id"],
            payment_known,
        )
        if earlier is not None:
            raise ApplicationError(
                f"waiting for earlier event {earlier} of {self.hook['entity_key']}",
                type=PREDECESSOR_PENDING,
                category=ApplicationErrorCategory.BENIGN,
            )

    async def _payment_succeeded(self, data: PaymentSucceeded, payment: Row | None) -> ApplyResult:
        if payment is not None and payment["status"] != "failed":
            return await self._unchanged(f"payment already {payment['status']}")
        if payment is not None and (payment["merchant_id"], payment["currency"]) != (
            data.merchant_id,
            data.currency,
        ):
            return await self._park("merchant or currency differs from the recorded payment")
        await self.conn.execute(
            "INSERT INTO payments (partner_id, payment_id, merchant_id, amount, currency,"
            " status, customer_email) VALUES ($1, $2, $3, $4, $5, 'succeeded', $6)"
            " ON CONFLICT (partner_id, payment_id) DO UPDATE SET status = 'succeeded',"
            " amount = EXCLUDED.amount, customer_email = EXCLUDED.customer_email,"
            " failure_code = NULL, updated_at = now()",
            self.partner_id,
            data.payment_id,
            data.merchant_id,
            data.amount,
            data.currency,
            data.customer_email,
        )
        await self._audit_payment(data.payment_id, payment, "succeeded")
        return await self._applied(
            data.merchant_id,
            {
                "payment_id": data.payment_id,
                "status": "succeeded",
                "amount": data.amount,
                "currency": data.currency,
                "refunded_amount": 0,
                "customer_email": data.customer_email,
            },
        )

    async def _payment_failed(self, data: PaymentFailed, payment: Row | None) -> ApplyResult:
        if payment is not None and payment["status"] == "failed":
            return await self._unchanged("payment already failed")
        if payment is not None:
            return await self._park(f"payment.failed after the payment {payment['status']}")
        await self.conn.execute(
            "INSERT INTO payments (partner_id, payment_id, merchant_id, amount, currency,"
            " status, failure_code) VALUES ($1, $2, $3, $4, $5, 'failed', $6)",
            self.partner_id,
            data.payment_id,
            data.merchant_id,
            data.amount,
            data.currency,
            data.failure_code,
        )
        await self._audit_payment(data.payment_id, None, "failed")
        return await self._applied(
            data.merchant_id,
            {
                "payment_id": data.payment_id,
                "status": "failed",
                "amount": data.amount,
                "currency": data.currency,
                "failure_code": data.failure_code,
            },
        )

    async def _refund_succeeded(self, data: RefundSucceeded, payment: Row | None) -> ApplyResult:
        if payment is None:
            if self.park_if_waiting and not await self._payment_on_its_way():
                return await self._park(
                    f"payment never arrived: {data.payment_id}",
                    DeadLetterCause.PAYMENT_NEVER_ARRIVED,
                )
            await self._finish(WebhookStatus.WAITING, f"waiting for payment {data.payment_id}")
            return ApplyResult(outcome=Outcome.WAITING)
        known = await self.conn.fetchval(
            "SELECT event_id FROM refunds WHERE partner_id = $1 AND refund_id = $2",
            self.partner_id,
            data.refund_id,
        )
        if known is not None:
            return await self._unchanged(f"refund {data.refund_id} already applied by {known}")
        if payment["status"] not in _REFUNDABLE:
            return await self._park(f"refund of a payment that is {payment['status']}")
        if (payment["merchant_id"], payment["currency"]) != (data.merchant_id, data.currency):
            return await self._park("merchant or currency differs from the payment")
        remaining = payment["amount"] - payment["refunded_amount"]
        if data.amount > remaining:
            return await self._park(f"refund of {data.amount} exceeds the {remaining} left")
        refunded = payment["refunded_amount"] + data.amount
        status = "refunded" if refunded == payment["amount"] else "partially_refunded"
        await self.conn.execute(
            "INSERT INTO refunds (partner_id, refund_id, payment_id, merchant_id, amount,"
            " currency, status, event_id) VALUES ($1, $2, $3, $4, $5, $6, 'succeeded', $7)",
            self.partner_id,
            data.refund_id,
            data.payment_id,
            data.merchant_id,
            data.amount,
            data.currency,
            self.event_id,
        )
        await self.conn.execute(
            "UPDATE payments SET refunded_amount = $3, status = $4, updated_at = now()"
            " WHERE partner_id = $1 AND payment_id = $2",
            self.partner_id,
            data.payment_id,
            refunded,
            status,
        )
        await audit(
            self.conn,
            "refund",
            f"{self.partner_id}:{data.refund_id}",
            None,
            "succeeded",
            actor=self.actor,
            reason=self.reason,
            event_id=self.event_id,
        )
        await self._audit_payment(data.payment_id, payment, status)
        return await self._applied(
            data.merchant_id,
            {
                "refund_id": data.refund_id,
                "payment_id": data.payment_id,
                "amount": data.amount,
                "currency": data.currency,
                "payment_status": status,
                "refunded_amount": refunded,
            },
        )

    async def _balance_updated(self, data: BalanceUpdated) -> ApplyResult:
        newer: datetime | None = await self.conn.fetchval(
            "INSERT INTO balances (partner_id, merchant_id, currency, available, pending, as_of,"
            " event_id) VALUES ($7, $1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (partner_id, merchant_id, currency) DO UPDATE"
            " SET available = EXCLUDED.available, pending = EXCLUDED.pending,"
            " as_of = EXCLUDED.as_of, event_id = EXCLUDED.event_id, updated_at = now()"
            " WHERE balances.as_of < EXCLUDED.as_of RETURNING as_of",
            data.merchant_id,
            data.currency,
            data.available,
            data.pending,
            data.as_of,
            self.event_id,
            self.partner_id,
        )
        if newer is None:
            return await self._unchanged("a newer balance is already recorded")
        return await self._applied(
            data.merchant_id,
            {
                "currency": data.currency,
                "available": data.available,
                "pending": data.pending,
                "as_of": data.as_of.isoformat(),
            },
        )

    async def _audit_payment(self, payment_id: str, before: Row | None, to_state: str) -> None:
        await audit(
            self.conn,
            "payment",
            f"{self.partner_id}:{payment_id}",
            None if before is None else before["status"],
            to_state,
            actor=self.actor,
            reason=self.reason,
            event_id=self.event_id,
        )

    async def _applied(self, merchant_id: str, data: dict[str, Any]) -> ApplyResult:
        """Append the merchant event (next seq), close the webhook, and name who it unblocks."""
        event_data = {"partner_id": self.partner_id, **data}
        seq = await append_merchant_event(
            self.conn, merchant_id, self.event_id, self.hook["event_type"], event_data
        )
        await plan_deliveries(
            self.conn,
            event_id=self.event_id,
            event_type=self.hook["event_type"],
            merchant_id=merchant_id,
            seq=seq,
            entity=f"{self.partner_id}|{self.hook['entity_key'] or merchant_id}",
            data=event_data,
        )
        await self._finish(WebhookStatus.PROCESSED, None)
        wake = await _waiting_workflows(self.conn, self.hook)
        return ApplyResult(outcome=Outcome.APPLIED, publish=True, wake_workflow_ids=wake)

    async def _unchanged(self, detail: str) -> ApplyResult:
        await self._finish(WebhookStatus.PROCESSED, detail)
        return ApplyResult(outcome=Outcome.UNCHANGED)

    async def _park(
        self, reason: str, cause: DeadLetterCause = DeadLetterCause.OTHER
    ) -> ApplyResult:
        await _dead_letter(self.conn, self.hook, reason, cause)
        return ApplyResult(outcome=Outcome.DEAD_LETTERED)

    async def _finish(self, status: WebhookStatus, detail: str | None) -> None:
        WEBHOOK_TRANSITIONS.check(self.hook["status"], status)
        # The workflow id is what a payment's workflow signals to wake a waiting refund.
        await self.conn.execute(
            "UPDATE webhooks SET status = $2, detail = $3, processed_at = CASE WHEN $5"
            " THEN NULL ELSE clock_timestamp() END, workflow_id = coalesce($4, workflow_id)"
            " WHERE event_id = $1",
            self.event_id,
            status,
            detail,
            self.workflow_id,
            status == WebhookStatus.WAITING,
        )
