"""Partners and their signing secrets: creation, rotation, and the ingress's cached lookup.

The ingress reads partners through :class:`PartnerDirectory`, a short-TTL cache, so the hot path
does no query per webhook; a rotation is seen within ``ttl`` seconds. Secrets rotate with an
overlap: the previous secret keeps verifying until its ``expires_at``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from api.secrets import rotate_owned_secret
from core.db import DATABASE_UNREACHABLE, Connection, within
from core.errors import OperatorError, Unavailable
from core.formats import PARTNER_ID_FORMAT
from core.signing import parse_secret

__all__ = ["Partner", "PartnerDirectory", "rotate_secret"]

# Unknown ids are cached briefly to spare the database, but only so many: they are unauthenticated.
MAX_CACHED_MISSES = 10_000
# A lookup waiting longer (a hung Postgres) serves the cached entry or answers 503.
LOOKUP_TIMEOUT = 1.0


@dataclass(frozen=True)
class Partner:
    """A partner as the ingress needs it: live signing keys and its rate limit."""

    id: str
    keys: tuple[bytes, ...]
    rate_limit_per_second: int | None


class PartnerDirectory:
    """Cached partner lookups for the ingress (misses are cached too, briefly)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ttl: float = 5.0,
        miss_ttl: float = 1.0,
        timeout: float = LOOKUP_TIMEOUT,
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._ttl = ttl
        self._miss_ttl = miss_ttl
        self._cache: dict[str, tuple[float, Partner | None]] = {}

    async def get(self, partner_id: str) -> Partner | None:
        """The partner with its currently valid keys, or ``None`` if there is no such partner.

        While Postgres is unreachable a cached entry is served past its TTL (the inbox write
        will answer 503 anyway); with nothing cached it raises :class:`Unavailable`.
        """
        if not PARTNER_ID_FORMAT.fullmatch(partner_id):
            return None
        now = time.monotonic()
        cached = self._cache.get(partner_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            partner = await within(self._timeout, self._load(partner_id))
        except DATABASE_UNREACHABLE as error:
            if cached is not None:
                return cached[1]
            raise Unavailable("partners cannot be looked up right now", retry_after=5) from error
        if partner is not None or len(self._cache) < MAX_CACHED_MISSES:
            self._cache[partner_id] = (now + (self._ttl if partner else self._miss_ttl), partner)
        return partner

    def forget(self, partner_id: str) -> None:
        """Drop a cached entry (after a change made through this process)."""
        self._cache.pop(partner_id, None)

    async def _load(self, partner_id: str) -> Partner | None:
        rows = await self._pool.fetch(
            "SELECT p.id, p.rate_limit_per_second, s.secret FROM partners p"
            " LEFT JOIN partner_secrets s ON s.partner_id = p.id"
            " AND (s.expires_at IS NULL OR s.expires_at > now())"
            " WHERE p.id = $1 ORDER BY s.id DESC",
            partner_id,
        )
        if not rows:
            return None
        keys = tuple(parse_secret(row["secret"]) for row in rows if row["secret"] is not None)
        return Partner(rows[0]["id"], keys, rows[0]["rate_limit_per_second"])


async def rotate_secret(
    conn: Connection, partner_id: str, *, overlap_seconds: int
) -> tuple[str, datetime | None]:
    """Add a new secret; current secrets stay valid for ``overlap_seconds``. Returns both facts."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT 1 FROM partners WHERE id = $1", partner_id):
            raise OperatorError(404, f"no partner {partner_id!r}")
        return await rotate_owned_secret(
            conn, "partner_secrets", partner_id, overlap_seconds=overlap_seconds
        )
