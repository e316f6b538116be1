"""Priority under backlog: with webhooks queued, payments and refunds start before balances."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from temporalio.client import Client

from core.settings import Settings
from tests.support import (
    add_partner,
    isolated_settings,
    running_api,
    running_worker,
    stores,
    wait_settled,
)


async def test_money_overtakes_a_backlog_of_balance_updates(
    postgres_admin_url: str, settings: Settings, temporal_client: Client
) -> None:
    """30 balance updates queued before 10 payments: every payment starts before any balance."""
    isolated = await isolated_settings(
        settings, postgres_admin_url, relay_batch_size=5, relay_max_in_flight=5
    )
    async with (
        stores(isolated) as (pool, redis),
        running_api(isolated) as api_url,
        httpx.AsyncClient(base_url=api_url) as http,
    ):
        partner = await add_partner(pool, http)
        balances = [
            await partner.send(
                "balance.updated",
                merchant_id=f"m_{n}",
                available=n,
                pending=0,
                currency="EUR",
                as_of=datetime.now(UTC).isoformat(),
            )
            for n in range(30)
        ]
        payments = [
            await partner.send(
                "payment.succeeded",
                payment_id=f"pay_{n}",
                merchant_id="m_0",
                amount=100,
                currency="EUR",
            )
            for n in range(10)
        ]
        async with running_worker(isolated, temporal_client, pool, redis):
            await wait_settled(pool, balances + payments)
        rows = await pool.fetch(
            "SELECT event_id, workflow_started_at FROM webhooks WHERE partner_id = $1",
            partner.id,
        )
    started = {row["event_id"]: row["workflow_started_at"] for row in rows}
    last_payment = max(started[event] for event in payments)
    first_balance = min(started[event] for event in balances)
    assert last_payment <= first_balance
