"""Publish activities: hand each merchant event to Redis for the WebSocket gateway.

Runs after the ledger transaction committed. Publishing again after a crash is harmless: the
message carries the merchant ``seq``, and clients drop a ``seq`` they already have.
"""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis
from temporalio import activity

from core.contracts import PublishInput, merchant_channel
from core.merchant_events import encode_merchant_event

__all__ = ["PublishActivities", "publish_merchant_event"]


async def publish_merchant_event(pool: asyncpg.Pool, redis: Redis, event_id: str) -> int | None:
    """Publish the committed merchant event ``event_id`` to its merchant's channel; returns how
    many subscribers got it (None if there is no such event)."""
    row = await pool.fetchrow(
        "SELECT merchant_id, seq, event_id, type, data, created_at FROM events WHERE event_id = $1",
        event_id,
    )
    if row is None:
        return None
    message = encode_merchant_event(row)
    receivers: int = await redis.publish(merchant_channel(row["merchant_id"]), message)
    return receivers


class PublishActivities:
    """Publishes merchant events (from the events log) to per-merchant Redis channels."""

    def __init__(self, pool: asyncpg.Pool, redis: Redis) -> None:
        self._pool = pool
        self._redis = redis

    @activity.defn(name="publish_event")
    async def publish_event(self, request: PublishInput) -> int:
        """Publish the event ``request.event_id`` produced; returns how many subscribers got it."""
        receivers = await publish_merchant_event(self._pool, self._redis, request.event_id)
        if receivers is None:
            return 0
        await self._pool.execute(
            "UPDATE webhooks SET published_at = coalesce(published_at, clock_timestamp())"
            " WHERE event_id = $1",
            request.event_id,
        )
        return receivers
