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

__all__ = ["PublishActivities"]


class PublishActivities:
    """Publishes merchant events (from the events log) to per-merchant Redis channels."""

    def __init__(self, pool: asyncpg.Pool, redis: Redis) -> None:
        self._pool = pool
        self._redis = redis

    @activity.defn(name="publish_event")
    async def publish_event(self, request: PublishInput) -> int:
        """Publish the event ``request.event_id`` produced; returns how many subscribers got it."""
        row = await self._pool.fetchrow(
            "SELECT merchant_id, seq, event_id, type, data, created_at FROM events"
            " WHERE event_id = $1",
            request.event_id,
        )
        if row is None:
            return 0
        message = encode_merchant_event(row)
        receivers: int = await self._redis.publish(merchant_channel(row["merchant_id"]), message)
        await self._pool.execute(
            "UPDATE webhooks SET published_at = coalesce(published_at, clock_timestamp())"
            " WHERE event_id = $1",
            request.event_id,
        )
        return receivers
