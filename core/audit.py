"""The audit log and alert rows: how every process records a state transition or opens an alert.

Alert kinds are declared where they are detected (:func:`core.alerting.alert_kind`); routing and
escalation happen after commit, in the worker (``relays/alerts.py``, ``workflows/escalation.py``).

Both are written inside the caller's transaction, so a transition and its audit entry (or the
fact that raised an alert) commit together or not at all.
"""

from __future__ import annotations

from typing import Any

from core.alerting import AlertKind
from core.contracts import ALERTS_CHANNEL
from core.db import Connection

__all__ = ["audit", "audit_many", "raise_alert", "resolve_alert"]


async def audit(
    conn: Connection,
    entity_type: str,
    entity_id: str,
    from_state: str | None,
    to_state: str,
    *,
    actor: str,
    reason: str | None,
    event_id: str | None = None,
) -> None:
    """Append one state transition to the audit log."""
    await conn.execute(
        "INSERT INTO audit_log (entity_type, entity_id, from_state, to_state, actor, reason,"
        " event_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        entity_type,
        entity_id,
        from_state,
        to_state,
        actor,
        reason,
        event_id,
    )


async def audit_many(
    conn: Connection,
    entity_type: str,
    entity_ids: list[str],
    from_state: str | None,
    to_state: str,
    *,
    actor: str,
    reason: str | None,
    event_ids: list[str] | None = None,
) -> None:
    """Append the same transition of many entities to the audit log in one statement;
    ``event_ids``, when given, pairs each entity with its event."""
    await conn.execute(
        "INSERT INTO audit_log (entity_type, entity_id, from_state, to_state, actor, reason,"
        " event_id) SELECT $1::text, e.id, $3::text, $4::text, $5::text, $6::text, e.event_id"
        " FROM unnest($2::text[], $7::text[]) AS e(id, event_id)",
        entity_type,
        entity_ids,
        from_state,
        to_state,
        actor,
        reason,
        event_ids if event_ids is not None else [None] * len(entity_ids),
    )


async def raise_alert(
    conn: Connection,
    kind: AlertKind,
    *,
    dedup_key: str,
    summary: str,
    details: dict[str, Any],
) -> None:
    """Open an alert of ``kind``, or count one more occurrence of the open alert with this key.

    Only an alert that opens wakes the alert relay (which routes it to its group's escalation);
    a repeat is one row update and costs nothing else.
    """
    row = await conn.fetchrow(
        "INSERT INTO alerts (dedup_key, kind, severity, summary, details)"
        " VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (dedup_key) WHERE status <> 'resolved' DO UPDATE"
        " SET occurrences = alerts.occurrences + 1, last_seen_at = now()"
        " RETURNING id, occurrences",
        dedup_key,
        kind.name,
        kind.severity,
        summary,
        details,
    )
    assert row is not None
    if row["occurrences"] == 1:
        await audit(
            conn,
            "alert",
            str(row["id"]),
            None,
            "open",
            actor="switchboard",
            reason=summary,
            event_id=details.get("event_id"),
        )
        await conn.execute("SELECT pg_notify($1, '')", ALERTS_CHANNEL)


async def resolve_alert(
    conn: Connection, dedup_key: str, *, reason: str, actor: str = "switchboard"
) -> bool:
    """Resolve the open alert with this dedup key because its condition cleared."""
    alert_id = await conn.fetchval(
        "UPDATE alerts SET status = 'resolved', resolved_at = now(), resolved_by = $2"
        " WHERE dedup_key = $1 AND status <> 'resolved' RETURNING id",
        dedup_key,
        actor,
    )
    if alert_id is None:
        return False
    await audit(conn, "alert", str(alert_id), "open", "resolved", actor=actor, reason=reason)
    await conn.execute("SELECT pg_notify($1, '')", ALERTS_CHANNEL)
    return True
