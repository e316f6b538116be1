"""The Redis client factory shared by the api and the worker.

One bounded, *blocking* connection pool per process: under a burst, callers wait briefly for a
free connection instead of failing (redis-py's default pool raises once 100 are in use).
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

__all__ = ["connect_redis"]


def connect_redis(url: str, *, max_connections: int = 64, timeout: float = 2.0) -> Redis:
    """A Redis client whose calls wait up to ``timeout`` s for a connection and for an answer."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    return Redis(connection_pool=pool)
