"""The delivery outbox: rows the worker's delivery relay sends, planned in the caller's transaction.

Like :mod:`core.audit`, every function here writes inside a transaction its caller owns (the
ledger's, for a new merchant event; an attempt's, for a notice), so a delivery exists exactly
when the fact it reports committed. Each write NOTIFYs :data:`core.contracts.DELIVERIES_CHANNEL`
so the relay picks it up at once (Postgres delivers the NOTIFY on commit).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from core.contracts import DELIVERIES_CHANNEL, DELIVERY_TRANSITIONS, DeliveryStatus, EventType
from core.db import Connection

__all__ = ["delivery_id", "plan_deliveries", "plan_notice", "wake_delivery_relay"]

# A delivery to a disabled endpoint is planned and dead-lettered in one statement.
DELIVERY_TRANSITIONS.check(None, DeliveryStatus.PENDING)
DELIVERY_TRANSITIONS.check(DeliveryStatus.PENDING, DeliveryStatus.DEAD_LETTERED)


def delivery_id(event_id: str, destination: str) -> str:
    """The ``webhook-id`` of one event to one destination: the same on every attempt and replay."""
    digest = hashlib.sha256(f"{event_id}|{destination}".encode()).digest()
    return "msg_" + base64.b32encode(digest).decode().rstrip("=").lower()[:26]


async def wake_delivery_relay(conn: Connection) -> None:
    """Tell the delivery relay that deliveries are ready (on commit of ``conn``'s transaction)."""
    await conn.execute("SELECT pg_notify($1, '')", DELIVERIES_CHANNEL)


@dataclass(frozen=True)
class _Planned:
    """One delivery a new merchant event needs: to an endpoint, or an email to a recipient."""

    id: str
    lane: str
    endpoint_id: str | None = None
    recipient: str | None = None
    template: str | None = None
    disabled: bool = False


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
    if event_type == EventType.PAYMENT_SUCCEEDED:
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
        " $5, $6, $7, $8, $10, CASE WHEN $9 THEN 'endpoint disabled' END,"
        " CASE WHEN $9 THEN clock_timestamp() END,"
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
                DeliveryStatus.DEAD_LETTERED if plan.disabled else DeliveryStatus.PENDING,
            )
            for plan in planned
        ],
    )
    await wake_delivery_relay(conn)
    return len(planned)


async def plan_notice(
    conn: Connection,
    *,
    merchant_id: str,
    recipient: str,
    template: str,
    key: str,
    context: dict[str, Any],
) -> str:
    """Record an operational email to a merchant (no merchant event behind it); returns its id.

    ``key`` names the occurrence (the id derives from it and the recipient); ``context`` is what
    the template shows, kept on the row as ``notice``.
    """
    notice_id = delivery_id(key, recipient)
    await conn.execute(
        "INSERT INTO deliveries (id, merchant_id, seq, channel, recipient, template, notice, lane,"
        " status) VALUES ($1, $2, 0, 'email', $3, $4, $5, $6, $7)",
        notice_id,
        merchant_id,
        recipient,
        template,
        context,
        f"email|{notice_id}",
        DeliveryStatus.PENDING,
    )
    await wake_delivery_relay(conn)
    return notice_id
