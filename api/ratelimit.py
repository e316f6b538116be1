"""Per-partner ingress rate limit, counted in Redis so every api process shares one budget.

A fixed one-second window per partner. Concurrent checks for the same window are counted
together, like the inbox's group commit: one ``INCRBY n`` (a tiny Lua script that also sets the
expiry) answers all ``n`` callers, each getting the position it would have had with one
``INCR`` apiece, so the limit is exact while a burst costs one round trip instead of ``n``.
Redis only protects here: if it is unreachable the limiter lets requests through rather than
refuse durable work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["RateLimiter"]

log = logging.getLogger("switchboard.ratelimit")

_COUNT = """
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
if count == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return count
"""


class RateLimiter:
    """``allow(key, limit)`` is True while ``key`` has made at most ``limit`` calls this second
    (this ``window`` of seconds, when given)."""

    def __init__(self, redis: Redis, *, prefix: str = "switchboard:rl") -> None:
        self._count = redis.register_script(_COUNT)
        self._prefix = prefix
        self._waiting: defaultdict[str, list[asyncio.Future[int]]] = defaultdict(list)
        self._flushers: dict[str, asyncio.Task[None]] = {}
        self._windows: dict[str, int] = {}

    async def allow(self, key: str, limit: int, *, window: int = 1) -> bool:
        name = f"{self._prefix}:{key}:{window}:{int(time.time()) // window}"
        self._windows[name] = window
        position: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[name].append(position)
        if name not in self._flushers:
            self._flushers[name] = asyncio.create_task(self._flush(name))
        try:
            return await position <= limit
        except (RedisError, OSError) as error:
            # With the exception attached, the log's repeated-failure filter collapses an
            # outage to a line a minute instead of one per request.
            log.warning("rate limiter unavailable, allowing", exc_info=error)
            return True

    async def _flush(self, name: str) -> None:
        """Count every caller waiting on ``name``, again while more arrive during the call."""
        try:
            while callers := self._waiting.pop(name, None):
                try:
                    window = self._windows.get(name, 1)
                    total = int(await self._count(keys=[name], args=[len(callers), window + 1]))
                except (RedisError, OSError) as error:
                    for caller in callers:
                        with contextlib.suppress(asyncio.InvalidStateError):
                            caller.set_exception(error)
                    continue
                first = total - len(callers) + 1
                for offset, caller in enumerate(callers):
                    # A caller whose request was cancelled meanwhile still used its slot.
                    with contextlib.suppress(asyncio.InvalidStateError):
                        caller.set_result(first + offset)
        finally:
            del self._flushers[name]
            self._windows.pop(name, None)
