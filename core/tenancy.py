"""Partners, merchants and the links between them: who may write what.

A merchant is onboarded with the partners that process for it; only a linked partner's webhooks
take effect for it (the ledger checks, :mod:`activities.ledger`). Every write here runs in the
caller's connection and is audited with its actor. The operator API, the CLI's dev stack, the
ledger (auto-onboarding) and the benchmarks all create tenants through these functions.
"""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

from core.audit import audit, resolve_alert
from core.contracts import DeadLetterCause
from core.db import Connection
from core.errors import OperatorError
from core.signing import generate_secret, parse_secret

__all__ = [
    "create_merchant",
    "create_partner",
    "link_partner",
    "onboard_merchant",
    "unlink_partner",
    "unlinked_merchant_alert_key",
    "update_merchant",
    "update_partner",
]


def unlinked_merchant_alert_key(partner_id: str, merchant_id: str) -> str:
    """The dedup key of the alert saying ``partner_id`` sends webhooks for ``merchant_id``
    without a link (one alert per pair, raised by the ledger, resolved by the link)."""
    return f"unlinked_merchant:{partner_id}:{merchant_id}"


async def create_partner(
    conn: Connection,
    partner_id: str,
    name: str,
    *,
    rate_limit_per_second: int | None = None,
    auto_onboard_merchants: bool = False,
    secret: str | None = None,
    actor: str = "switchboard",
) -> str:
    """Create a partner with a fresh (or the given) ``whsec_`` secret and return the secret.

    ``auto_onboard_merchants`` lets its webhooks create (and link) merchants never seen before;
    a merchant that exists must be linked by an operator either way.
    """
    secret = secret or generate_secret()
    parse_secret(secret)
    async with conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO partners (id, name, rate_limit_per_second, auto_onboard_merchants)"
                " VALUES ($1, $2, $3, $4)",
                partner_id,
                name,
                rate_limit_per_second,
                auto_onboard_merchants,
            )
        except asyncpg.UniqueViolationError:
            raise OperatorError(409, f"partner {partner_id!r} already exists") from None
        except asyncpg.CheckViolationError:
            raise OperatorError(
                422, "partner ids are 1-64 letters, digits, '_', '.' or '-'"
            ) from None
        await conn.execute(
            "INSERT INTO partner_secrets (partner_id, secret) VALUES ($1, $2)", partner_id, secret
        )
        onboarding = "onboards new merchants" if auto_onboard_merchants else "linked merchants only"
        await audit(conn, "partner", partner_id, None, "created", actor=actor, reason=onboarding)
    return secret


async def update_partner(
    conn: Connection, partner_id: str, changes: Mapping[str, object], *, actor: str
) -> asyncpg.Record:
    """Change only the given settings of a partner (``name``, ``rate_limit_per_second``,
    ``auto_onboard_merchants``), audited; 404 if there is no such partner."""
    assert set(changes) <= {"name", "rate_limit_per_second", "auto_onboard_merchants"}
    async with conn.transaction():
        before = await conn.fetchrow("SELECT * FROM partners WHERE id = $1 FOR UPDATE", partner_id)
        if before is None:
            raise OperatorError(404, f"no partner {partner_id!r}")
        row = await conn.fetchrow(
            "UPDATE partners SET name = CASE WHEN $2 THEN $3 ELSE name END,"
            " rate_limit_per_second = CASE WHEN $4 THEN $5 ELSE rate_limit_per_second END,"
            " auto_onboard_merchants = CASE WHEN $6 THEN $7 ELSE auto_onboard_merchants END"
            " WHERE id = $1 RETURNING *",
            partner_id,
            "name" in changes,
            changes.get("name"),
            "rate_limit_per_second" in changes,
            changes.get("rate_limit_per_second"),
            "auto_onboard_merchants" in changes,
            changes.get("auto_onboard_merchants"),
        )
        assert row is not None
        changed = [
            f"{field}={row[field]}" for field in sorted(changes) if before[field] != row[field]
        ]
        if changed:
            await audit(
                conn,
                "partner",
                partner_id,
                "active",
                "active",
                actor=actor,
                reason="changed " + ", ".join(changed),
            )
    return row


async def create_merchant(
    conn: Connection,
    merchant_id: str,
    *,
    name: str | None,
    email: str | None,
    partner_ids: list[str],
    actor: str,
) -> asyncpg.Record:
    """Create a merchant linked to ``partner_ids``; 409 if it exists, 404 for unknown partners."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "INSERT INTO merchants (id, name, email) VALUES ($1, $2, $3)"
            " ON CONFLICT (id) DO NOTHING RETURNING *",
            merchant_id,
            name,
            email,
        )
        if row is None:
            raise OperatorError(409, f"merchant {merchant_id!r} already exists")
        await audit(conn, "merchant", merchant_id, None, "created", actor=actor, reason=None)
        for partner_id in partner_ids:
            await link_partner(conn, merchant_id, partner_id, actor=actor)
    return row


async def update_merchant(
    conn: Connection, merchant_id: str, changes: Mapping[str, str | None], *, actor: str
) -> asyncpg.Record:
    """Change only the given fields (``name``, ``email``) of a merchant, audited; 404 if absent."""
    assert set(changes) <= {"name", "email"}
    async with conn.transaction():
        before = await conn.fetchrow(
            "SELECT * FROM merchants WHERE id = $1 FOR UPDATE", merchant_id
        )
        if before is None:
            raise OperatorError(404, f"no merchant {merchant_id!r}")
        row = await conn.fetchrow(
            "UPDATE merchants SET name = CASE WHEN $2 THEN $3 ELSE name END,"
            " email = CASE WHEN $4 THEN $5 ELSE email END WHERE id = $1 RETURNING *",
            merchant_id,
            "name" in changes,
            changes.get("name"),
            "email" in changes,
            changes.get("email"),
        )
        assert row is not None
        changed = sorted(field for field in changes if before[field] != row[field])
        if changed:
            await audit(
                conn,
                "merchant",
                merchant_id,
                "active",
                "active",
                actor=actor,
                reason="changed " + ", ".join(changed),
            )
    return row


async def link_partner(
    conn: Connection, merchant_id: str, partner_id: str, *, actor: str
) -> tuple[bool, list[str]]:
    """Link a partner to a merchant (audited). Returns whether the link is new, and the event ids
    of the partner's webhooks for this merchant that were parked for lack of it (to replay).
    The pair's ``unlinked_merchant`` alert, if open, is resolved: its condition has cleared."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT 1 FROM merchants WHERE id = $1", merchant_id):
            raise OperatorError(404, f"no merchant {merchant_id!r}")
        if not await conn.fetchval("SELECT 1 FROM partners WHERE id = $1", partner_id):
            raise OperatorError(404, f"no partner {partner_id!r}")
        created = await conn.fetchval(
            "INSERT INTO merchant_partners (merchant_id, partner_id, linked_by)"
            " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING true",
            merchant_id,
            partner_id,
            actor,
        )
        await resolve_alert(
            conn,
            unlinked_merchant_alert_key(partner_id, merchant_id),
            reason=f"partner {partner_id} linked to merchant {merchant_id}",
            actor=actor,
        )
        if not created:
            return False, []
        await _audit_link(conn, merchant_id, partner_id, None, "linked", actor=actor)
        parked = await conn.fetch(
            "SELECT d.event_id FROM dead_letters d JOIN webhooks w USING (event_id)"
            " WHERE d.cause = $3 AND w.status = 'dead_lettered' AND w.partner_id = $2"
            " AND w.merchant_id = $1 ORDER BY w.id",
            merchant_id,
            partner_id,
            DeadLetterCause.UNLINKED_MERCHANT,
        )
    return True, [row["event_id"] for row in parked]


async def unlink_partner(
    conn: Connection, merchant_id: str, partner_id: str, *, actor: str
) -> None:
    """Remove a partner's link to a merchant (audited): its later webhooks for it are parked."""
    async with conn.transaction():
        removed = await conn.fetchval(
            "DELETE FROM merchant_partners WHERE merchant_id = $1 AND partner_id = $2"
            " RETURNING true",
            merchant_id,
            partner_id,
        )
        if not removed:
            raise OperatorError(404, f"partner {partner_id!r} is not linked to {merchant_id!r}")
        await _audit_link(conn, merchant_id, partner_id, "linked", "unlinked", actor=actor)


async def onboard_merchant(
    conn: Connection,
    merchant_id: str,
    partner_id: str,
    *,
    actor: str,
    reason: str,
    event_id: str | None = None,
) -> bool:
    """Onboard a merchant on a partner's first webhook for it, and say whether the partner may
    now write for it: the merchant is created if it is new, and the partner is linked if the
    merchant has no partner yet. A merchant some partner is linked to is never taken over.
    """
    created = await conn.fetchval(
        "INSERT INTO merchants (id) VALUES ($1) ON CONFLICT (id) DO NOTHING RETURNING true",
        merchant_id,
    )
    if created:
        await audit(
            conn,
            "merchant",
            merchant_id,
            None,
            "created",
            actor=actor,
            reason=reason,
            event_id=event_id,
        )
    # The row lock makes concurrent first webhooks from different partners take turns.
    await conn.execute("SELECT 1 FROM merchants WHERE id = $1 FOR UPDATE", merchant_id)
    linked = {
        row["partner_id"]
        for row in await conn.fetch(
            "SELECT partner_id FROM merchant_partners WHERE merchant_id = $1", merchant_id
        )
    }
    if linked:
        return partner_id in linked
    await conn.execute(
        "INSERT INTO merchant_partners (merchant_id, partner_id, linked_by) VALUES ($1, $2, $3)",
        merchant_id,
        partner_id,
        actor,
    )
    await _audit_link(conn, merchant_id, partner_id, None, "linked", actor=actor, reason=reason)
    return True


async def _audit_link(
    conn: Connection,
    merchant_id: str,
    partner_id: str,
    from_state: str | None,
    to_state: str,
    *,
    actor: str,
    reason: str | None = None,
) -> None:
    await audit(
        conn,
        "merchant_partner",
        f"{merchant_id}|{partner_id}",
        from_state,
        to_state,
        actor=actor,
        reason=reason,
    )
