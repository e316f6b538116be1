"""Who may open a connection: Origin allow-list, handshake rate limits and connection caps.

Rate limits are token buckets kept in this instance's memory: they exist to absorb reconnection
storms (every dashboard reconnecting after a deploy), which hit each instance separately, and
they must keep working while Redis is down. Over the limit the handshake gets HTTP 429 with
``Retry-After``, before any WebSocket is opened.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["Admission", "Refusal", "TokenBucket"]

# Distinct sources remembered for per-source limits; the least recently seen are forgotten first.
MAX_TRACKED_SOURCES = 100_000


@dataclass
class TokenBucket:
    """``rate`` tokens per second, up to ``burst`` saved; ``take`` answers how long to wait."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst
        self.updated = time.monotonic()

    def take(self, now: float) -> float:
        """Spend one token and return 0, or return the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass(frozen=True)
class Refusal:
    """A handshake refused before 101: HTTP status, reason (a metric label) and ``Retry-After``."""

    status: int
    reason: str
    detail: str
    retry_after: int | None = None


class Admission:
    """Decides whether a handshake may proceed (``check``)."""

    def __init__(
        self,
        *,
        allowed_origins: list[str],
        allow_missing_origin: bool,
        rate_per_source: float,
        rate_global: float,
        max_connections: int,
    ) -> None:
        self._origins = frozenset(allowed_origins)
        self._allow_missing_origin = allow_missing_origin
        self._rate_per_source = rate_per_source
        self._global = TokenBucket(rate_global, 2 * rate_global)
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max_connections = max_connections

    def origin_allowed(self, origin: str | None) -> bool:
        """Exact matches only: no wildcards, prefixes or suffixes (``null`` is never allowed)."""
        if origin is None:
            return self._allow_missing_origin
        return origin in self._origins

    def check(self, origin: str | None, source: str, open_connections: int) -> Refusal | None:
        """None to proceed, else why not. The Origin check comes first and costs no tokens."""
        if not self.origin_allowed(origin):
            return Refusal(403, "origin", "Origin not allowed.\n")
        now = time.monotonic()
        wait = self._source_bucket(source).take(now)
        if wait > 0:
            return Refusal(
                429,
                "rate",
                "Too many connection attempts from your address; back off.\n",
                _ceil(wait),
            )
        wait = self._global.take(now)
        if wait > 0:
            return Refusal(429, "rate", "Too many connection attempts; back off.\n", _ceil(wait))
        if open_connections >= self._max_connections:
            return Refusal(503, "capacity", "This instance is full; try another.\n", 5)
        return None

    def _source_bucket(self, source: str) -> TokenBucket:
        bucket = self._sources.get(source)
        if bucket is None:
            bucket = TokenBucket(self._rate_per_source, 2 * self._rate_per_source)
            self._sources[source] = bucket
            if len(self._sources) > MAX_TRACKED_SOURCES:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(source)
        return bucket


def _ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds))
