"""Waits shared by the delivery tests: a delivery's rows and its webhook delivery's status."""

from __future__ import annotations

import asyncpg

from tests.support import wait_for


async def deliveries_of(pool: asyncpg.Pool, event_id: str) -> list[asyncpg.Record]:
    """Every delivery (webhooks and emails) of one merchant event."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT * FROM deliveries WHERE event_id = $1 ORDER BY id", event_id
    )
    return rows


async def wait_delivery_status(
    pool: asyncpg.Pool, event_id: str, status: str, *, timeout: float = 30.0
) -> asyncpg.Record:
    """Wait until the event's webhook delivery (its only one in these tests) has ``status``."""

    async def probe() -> asyncpg.Record | None:
        rows = await deliveries_of(pool, event_id)
        webhooks = [row for row in rows if row["channel"] == "webhook"]
        return webhooks[0] if webhooks and webhooks[0]["status"] == status else None

    return await wait_for(probe, timeout=timeout, what=f"{event_id}'s delivery to be {status}")
