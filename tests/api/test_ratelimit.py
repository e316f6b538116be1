"""The Redis rate limiter counts concurrent callers exactly, in one round trip per burst."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from redis.asyncio import Redis

from api.ratelimit import RateLimiter
from core.logs import RepeatedFailureFilter
from core.realtime import connect_redis
from tests.core.test_logs import Collect


async def test_concurrent_checks_are_counted_exactly(redis: Redis) -> None:
    """Fifty simultaneous checks against a limit of 20 allow exactly 20 per one-second window."""
    limiter = RateLimiter(redis, prefix=f"test-rl-{uuid.uuid4().hex[:8]}")
    before = int(time.time())
    allowed = await asyncio.gather(*(limiter.allow("p", 20) for _ in range(50)))
    after = int(time.time())
    windows = after - before + 1
    assert sum(allowed) == 20 if windows == 1 else 20 <= sum(allowed) <= 20 * windows


async def test_unreachable_redis_fails_open_and_says_so_once() -> None:
    """With Redis down the limiter allows requests rather than refusing durable work; the
    outage is one warning in the log (filtered as the api's log is), not one per request."""
    unreachable = connect_redis("redis://127.0.0.1:9/0", timeout=0.5)  # as the api's
    logger = logging.getLogger("switchboard.ratelimit")
    collect = Collect()
    collect.addFilter(RepeatedFailureFilter())
    logger.addHandler(collect)
    try:
        limiter = RateLimiter(unreachable)
        assert all([await limiter.allow("p", 1) for _ in range(3)])
    finally:
        logger.removeHandler(collect)
        await unreachable.aclose()
    assert [r.getMessage() for r in collect.records] == ["rate limiter unavailable, allowing"]
