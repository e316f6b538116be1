"""Signing-secret rotation shared by partners (inbound) and merchant endpoints (outbound).

Rotation adds a fresh ``whsec_`` secret and gives the live ones an expiry: during the overlap,
inbound verification accepts either, and outbound deliveries carry one signature per live
secret, so receivers on the old and on the new secret both verify.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from core.db import Connection
from core.signing import generate_secret

__all__ = ["rotate_owned_secret"]

_OWNERS = {"partner_secrets": "partner_id", "endpoint_secrets": "endpoint_id"}


async def rotate_owned_secret(
    conn: Connection,
    table: Literal["partner_secrets", "endpoint_secrets"],
    owner_id: str,
    *,
    overlap_seconds: float,
) -> tuple[str, datetime | None]:
    """Add a new secret for ``owner_id``; live ones expire after ``overlap_seconds``.

    Returns the new secret and when the previous ones stop working (None if there were none).
    The caller checks that the owner exists, inside the same transaction.
    """
    owner = _OWNERS[table]
    secret = generate_secret()
    expires_at: datetime | None = await conn.fetchval(
        f"UPDATE {table} SET expires_at = least(coalesce(expires_at, 'infinity'),"
        f" now() + make_interval(secs => $2)) WHERE {owner} = $1"
        " AND (expires_at IS NULL OR expires_at > now()) RETURNING expires_at",
        owner_id,
        float(overlap_seconds),
    )
    await conn.execute(f"INSERT INTO {table} ({owner}, secret) VALUES ($1, $2)", owner_id, secret)
    return secret, expires_at
