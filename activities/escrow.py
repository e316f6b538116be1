"""Escrow activities: the saga's steps, each one Postgres transaction through :mod:`core.escrow`.

Every step is idempotent under at-least-once execution: money moves under keys derived from the
escrow and the wallet (never from Temporal's attempt or run), and a transition names the
escrow's version it starts from, so one repeated after it committed changes nothing. A debit the
ledger refuses for good (insufficient funds, a closed wallet, or the escrow no longer
``funding``: a stale attempt) fails as a non-retryable ``ApplicationError`` of the refusal's
type, which the saga compensates; a return to a source is retried until it is done.

A step that moves the escrow publishes the transition's merchant event to Redis once its
transaction committed, in the same activity: a publish that fails fails the step, whose retry
finds the transition committed and publishes it again (at least once; the event carries the
merchant ``seq``, so a repeat is dropped by clients). The saga runs these steps as local
activities (:mod:`workflows.escrow`).
"""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.publish import publish_merchant_event
from core import escrow
from core.alerting import Severity, alert_kind
from core.audit import raise_alert, resolve_alert
from core.contracts import (
    EscrowAlertInput,
    EscrowMoveInput,
    EscrowSettleInput,
    EscrowSourceInput,
)
from core.errors import MoneyRefused, OperatorError

__all__ = ["ALERT_KINDS", "COMPENSATION_SLOW", "RELEASE_REFUSED", "EscrowActivities"]

COMPENSATION_SLOW = alert_kind(
    "escrow_compensation_slow",
    Severity.CRITICAL,
    "An escrow's funding failed and returning the debits already made is taking too long;"
    " the saga keeps retrying until every debit is returned.",
)
RELEASE_REFUSED = alert_kind(
    "escrow_release_refused",
    Severity.ERROR,
    "An escrow's release was refused for good (the payout provider refused the transfer, or"
    " the beneficiary wallet is closed): it waits in release_failed for an operator to retry"
    " the release or refund it.",
)
ALERT_KINDS = {kind.name: kind for kind in (COMPENSATION_SLOW, RELEASE_REFUSED)}
"""The kinds an escrow's saga raises, by name (the name travels in :class:`EscrowAlertInput`)."""


class EscrowActivities:
    """The escrow saga's steps, on a Postgres pool, publishing to ``redis`` (without one, the
    events stay in Postgres, where the gateway's gap fill reads them)."""

    def __init__(self, pool: asyncpg.Pool, redis: Redis | None = None) -> None:
        self._pool = pool
        self._redis = redis

    @activity.defn(name="move_escrow")
    async def move_escrow(self, step: EscrowMoveInput) -> str:
        """Move the escrow (audited, announced, published); returns its event."""
        async with self._pool.acquire() as conn:
            moved = await escrow.move(
                conn,
                step.escrow_id,
                step.from_status,
                step.to_status,
                version=step.version,
                actor=step.actor,
                reason=step.reason,
            )
        return await self._published(moved.event_id)

    @activity.defn(name="debit_escrow_source")
    async def debit_escrow_source(self, leg: EscrowSourceInput) -> None:
        """Debit one source into the escrow; a refusal is final (non-retryable, its type)."""
        async with self._pool.acquire() as conn:
            try:
                await escrow.debit_source(
                    conn, leg.escrow_id, leg.wallet_id, leg.amount, leg.currency, actor=leg.actor
                )
            except MoneyRefused as error:
                raise _final(error) from None

    @activity.defn(name="return_escrow_source")
    async def return_escrow_source(self, leg: EscrowSourceInput) -> None:
        """Return one source's debit (retried until done, whatever the error)."""
        async with self._pool.acquire() as conn:
            await escrow.return_source(
                conn, leg.escrow_id, leg.wallet_id, leg.amount, leg.currency, actor=leg.actor
            )

    @activity.defn(name="release_escrow")
    async def release_escrow(self, step: EscrowSettleInput) -> str:
        """Pay the escrow to its beneficiary and mark it released (published); returns the
        event. A closed beneficiary wallet is final (non-retryable ``WalletClosed``)."""
        async with self._pool.acquire() as conn:
            try:
                moved = await escrow.release(
                    conn,
                    step.escrow_id,
                    version=step.version,
                    actor=step.actor,
                    reason=step.reason,
                    transfer_id=step.transfer_id,
                )
            except MoneyRefused as error:
                raise _final(error) from None
        return await self._published(moved.event_id)

    @activity.defn(name="refund_escrow")
    async def refund_escrow(self, step: EscrowSettleInput) -> str:
        """Return every source's debit and mark the escrow refunded (published); returns the
        event."""
        async with self._pool.acquire() as conn:
            moved = await escrow.refund(
                conn, step.escrow_id, version=step.version, actor=step.actor, reason=step.reason
            )
        return await self._published(moved.event_id)

    @activity.defn(name="escrow_alert")
    async def escrow_alert(self, alert: EscrowAlertInput) -> None:
        """Open the escrow's alert of this kind (or resolve it), deduplicated per escrow."""
        kind = ALERT_KINDS[alert.kind]
        dedup_key = f"{kind.name}:{alert.escrow_id}"
        async with self._pool.acquire() as conn, conn.transaction():
            if alert.resolve:
                await resolve_alert(conn, dedup_key, reason=alert.summary)
                return
            merchant_id = (await escrow.show(conn, alert.escrow_id))["merchant_id"]
            await raise_alert(
                conn,
                kind,
                dedup_key=dedup_key,
                summary=alert.summary,
                details={"escrow_id": alert.escrow_id, "merchant_id": merchant_id},
            )

    async def _published(self, event_id: str) -> str:
        if self._redis is not None:
            await publish_merchant_event(self._pool, self._redis, event_id)
        return event_id


def _final(error: OperatorError) -> ApplicationError:
    return ApplicationError(error.detail, type=type(error).__name__, non_retryable=True)
