"""The relay never starves itself: a full house of waiting workflows gets what it waits for."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from temporalio.client import Client

from core.settings import Settings
from tests.support import isolated_settings, running_worker, stores, wait_settled


async def test_events_that_running_workflows_wait_for_are_started_at_capacity(
    postgres_admin_url: str, settings: Settings, temporal_client: Client
) -> None:
    """With one slot taken by a refund waiting on its payment, the payment still gets started."""
    isolated = await isolated_settings(settings, postgres_admin_url, relay_max_in_flight=1)
    common = {"payment_id": "pay_s", "merchant_id": "m_s", "currency": "EUR"}
    rows: list[tuple[str, str, str, dict[str, Any], timedelta | None]] = [
        # A dead relay's lease holds the payment for a moment, so the refund is started first.
        ("evt_payment", "msg_p", "payment.succeeded", {"amount": 100}, timedelta(seconds=1)),
        ("evt_refund", "msg_r", "refund.succeeded", {"refund_id": "re_s", "amount": 40}, None),
    ]
    async with stores(isolated) as (pool, redis):
        await pool.execute(
            "INSERT INTO partners (id, name, auto_onboard_merchants) VALUES ('p_s', 'p_s', true)"
        )
        for event_id, webhook_id, event_type, data, lease in rows:
            envelope = {"type": event_type, "data": {**common, **data}}
            await pool.execute(
                "INSERT INTO webhooks (event_id, partner_id, webhook_id, body_sha256, event_type,"
                " entity_key, merchant_id, priority, payload, received_at, relay_lease_until)"
                " VALUES ($1, 'p_s', $2, $3, $4, 'payment:pay_s', 'm_s', 1, $5, now(),"
                " now() + $6)",
                event_id,
                webhook_id,
                hashlib.sha256(json.dumps(envelope).encode()).digest(),
                event_type,
                envelope,
                lease,
            )
        async with running_worker(isolated, temporal_client, pool, redis):
            statuses = await wait_settled(pool, ["evt_payment", "evt_refund"], timeout=30)
        assert statuses == {"evt_payment": "processed", "evt_refund": "processed"}
        refunded = await pool.fetchval("SELECT refunded_amount FROM payments")
        assert refunded == 40
