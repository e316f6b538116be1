"""The Redis rate limiter counts concurrent callers exactly, in one round trip per burst."""

from __future__ import annotations

import asyncio
import time
import uuid

from redis.asyncio import Redis

from api.ratelimit import RateLimiter


async def test_concurrent_checks_are_counted_exactly(redis: Redis) -> None:
    """Fifty simultaneous checks against a limit of 20 allow exactly 20 per one-second window."""
    limiter = RateLimiter(redis, prefix=f"test-rl-{uuid.uuid4().hex[:8]}")
    before = int(time.time())
    allowed = await asyncio.gather(*(limiter.allow("p", 20) for _ in range(50)))
    after = int(time.time())
    windows = after - before + 1
    assert sum(allowed) == 20 if windows == 1 else 20 <= sum(allowed) <= 20 * windows


async def test_unreachable_redis_fails_open() -> None:
    """With Redis down the limiter allows requests rather than refusing durable work."""
    unreachable = Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.2)
    try:
        assert await RateLimiter(unreachable).allow("p", 1)
    finally:
        await unreachable.aclose()
