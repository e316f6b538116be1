"""Exchange requests: every write, each one Postgres transaction with its audit entry.

An exchange request (an operator-handled request, e.g. fiat-crypto) moves as
:data:`core.contracts.EXCHANGE_TRANSITIONS` draws it, and migration 0006's trigger refuses
anything else. Each change reads the row, checks its precondition against what it read, and
writes only if the row is still at the version it read (the UPDATE re-checks that under the row
lock), appending the transition to the audit log and to two live feeds (the desk's and the
request's own, :mod:`core.feeds`) in the same transaction. So of any number of simultaneous
claims exactly one moves the request from ``pending``: the others wait on the row lock in their
UPDATE, find it moved, read it ``assigned`` and are refused with the winner's name
(:class:`ExchangeConflict`). No distributed lock and no retry the caller sees: the row lock is
the queue, and a loser holds it for no round trip.

Who may do what: anyone with the working scope creates, claims and cancels a request nobody
holds; only the assignee advances it (``processing``, ``completed``, ``failed``), releases it
(back to ``pending``) or cancels it once assigned; an admin may also cancel it, and reassign it
to another operator (the status is kept).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from core import feeds
from core.audit import audit
from core.contracts import EXCHANGE_TRANSITIONS, ExchangeStatus
from core.db import Connection
from core.errors import ExchangeConflict, OperatorError

__all__ = [
    "ADVANCES",
    "COLUMNS",
    "Actor",
    "advance",
    "cancel",
    "claim",
    "create",
    "expire_assignment",
    "list_requests",
    "reassign",
    "release",
    "show",
    "timeline",
    "transition_event_ids",
]

ENTITY = EXCHANGE_TRANSITIONS.entity
COLUMNS = (
    "id, merchant_id, customer_id, from_amount, from_currency, to_currency, quote, status,"
    " assignee, created_by, created_at, updated_at, version, customer_email"
)
ADVANCES = frozenset({ExchangeStatus.PROCESSING, ExchangeStatus.COMPLETED, ExchangeStatus.FAILED})
"""Where the assignee may advance a request."""


@dataclass(frozen=True)
class Actor:
    """Who changes a request: their audit name, and whether they are an admin."""

    name: str
    admin: bool = False


Decision = Callable[[asyncpg.Record], tuple[ExchangeStatus, str | None]]
"""Given the locked row, the status and assignee it moves to, or :class:`ExchangeConflict`."""


async def create(
    conn: Connection,
    *,
    merchant_id: str,
    customer_id: str,
    from_amount: int,
    from_currency: str,
    to_currency: str,
    quote: int | None,
    actor: str,
    customer_email: str | None = None,
) -> asyncpg.Record:
    """A new request, queued at once: ``created`` and ``created → pending`` in one transaction,
    both audited. 404 if the merchant does not exist."""
    request_id = f"exr_{uuid.uuid4().hex}"
    if from_currency == to_currency:
        if not await conn.fetchval("SELECT true FROM merchants WHERE id = $1", merchant_id):
            raise OperatorError(404, f"no merchant {merchant_id!r}")
        raise OperatorError(422, "an exchange request needs two different currencies")
    async with conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO exchange_requests (id, merchant_id, customer_id, from_amount,"
                " from_currency, to_currency, quote, status, created_by, customer_email)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                request_id,
                merchant_id,
                customer_id,
                from_amount,
                from_currency,
                to_currency,
                quote,
                EXCHANGE_TRANSITIONS.initial,
                actor,
                customer_email,
            )
        except asyncpg.ForeignKeyViolationError:
            raise OperatorError(404, f"no merchant {merchant_id!r}") from None
        await _record(
            conn,
            await show(conn, request_id),
            None,
            EXCHANGE_TRANSITIONS.initial,
            actor=actor,
            reason=None,
        )
        queued = await _move(
            conn,
            request_id,
            EXCHANGE_TRANSITIONS.initial,
            ExchangeStatus.PENDING,
            None,
            actor=actor,
            reason="queued",
            version=1,
        )
        assert queued is not None, "nobody else sees the row before it commits"
        return queued


async def claim(conn: Connection, request_id: str, *, actor: Actor) -> asyncpg.Record:
    """Assign a ``pending`` request to ``actor``; a claim that lost the race is a 409 naming
    the winner."""

    def decide(row: asyncpg.Record) -> tuple[ExchangeStatus, str | None]:
        if row["status"] != ExchangeStatus.PENDING:
            raise _conflict(row, "cannot be claimed")
        return ExchangeStatus.ASSIGNED, actor.name

    return await _transition(conn, request_id, decide, actor=actor.name, reason="claimed")


async def advance(
    conn: Connection, request_id: str, to: ExchangeStatus, *, actor: Actor, reason: str | None
) -> asyncpg.Record:
    """Move an assigned request on (``processing``, ``completed`` or ``failed``); only its
    assignee may."""
    if to not in ADVANCES:
        raise OperatorError(422, f"an exchange request is advanced to one of {sorted(ADVANCES)}")

    def decide(row: asyncpg.Record) -> tuple[ExchangeStatus, str | None]:
        _require_assignee(row, actor, f"advanced to {to}")
        if to == row["status"] or not EXCHANGE_TRANSITIONS.allows(row["status"], to):
            raise _conflict(row, f"cannot go to {to}")
        return to, row["assignee"]

    return await _transition(conn, request_id, decide, actor=actor.name, reason=reason)


async def release(
    conn: Connection, request_id: str, *, actor: Actor, reason: str | None
) -> asyncpg.Record:
    """Put an assigned request back in the queue; only its assignee may."""

    def decide(row: asyncpg.Record) -> tuple[ExchangeStatus, str | None]:
        _require_assignee(row, actor, "released")
        if row["status"] != ExchangeStatus.ASSIGNED:
            raise _conflict(row, "cannot be released")
        return ExchangeStatus.PENDING, None

    return await _transition(conn, request_id, decide, actor=actor.name, reason=reason)


async def reassign(
    conn: Connection, request_id: str, assignee: str, *, actor: Actor, reason: str | None
) -> asyncpg.Record:
    """An admin gives a pending, assigned or processing request to ``assignee`` (an operator's
    audit name); a processing request stays processing."""
    if not actor.admin:
        raise OperatorError(403, "only an admin may reassign an exchange request")

    def decide(row: asyncpg.Record) -> tuple[ExchangeStatus, str | None]:
        if row["assignee"] == assignee:
            raise _conflict(row, f"is already assigned to {assignee}")
        if row["status"] == ExchangeStatus.PROCESSING:
            return ExchangeStatus.PROCESSING, assignee
        if row["status"] in (ExchangeStatus.PENDING, ExchangeStatus.ASSIGNED):
            return ExchangeStatus.ASSIGNED, assignee
        raise _conflict(row, "cannot be reassigned")

    return await _transition(conn, request_id, decide, actor=actor.name, reason=reason)


async def cancel(
    conn: Connection, request_id: str, *, actor: Actor, reason: str | None
) -> asyncpg.Record:
    """Cancel a request nobody has started on: anyone while it is queued, its assignee or an
    admin once it is assigned."""

    def decide(row: asyncpg.Record) -> tuple[ExchangeStatus, str | None]:
        if not EXCHANGE_TRANSITIONS.allows(row["status"], ExchangeStatus.CANCELLED):
            raise _conflict(row, "cannot be cancelled")
        if row["assignee"] is not None and not actor.admin:
            _require_assignee(row, actor, "cancelled")
        return ExchangeStatus.CANCELLED, row["assignee"]

    return await _transition(conn, request_id, decide, actor=actor.name, reason=reason)


async def expire_assignment(
    conn: Connection, request_id: str, *, version: int, actor: str, reason: str
) -> asyncpg.Record:
    """Put a request back in the queue because its assignee made no progress: only if it is
    still ``assigned`` at ``version`` (a timer's conditional write), else
    :class:`ExchangeConflict`. The reason names the assignee, for them and the timeline."""

    def decide(row: asyncpg.Record) -> tuple[ExchangeStatus, str | None]:
        if row["status"] != ExchangeStatus.ASSIGNED or row["version"] != version:
            raise _conflict(row, f"moved on since version {version}")
        return ExchangeStatus.PENDING, None

    return await _transition(conn, request_id, decide, actor=actor, reason=reason)


async def show(conn: Connection, request_id: str) -> asyncpg.Record:
    """One request; 404 if there is none."""
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM exchange_requests WHERE id = $1", request_id)
    if row is None:
        raise OperatorError(404, f"no exchange request {request_id!r}")
    return row


async def timeline(conn: Connection, request_id: str) -> list[asyncpg.Record]:
    """A request's audit log, oldest first: each transition with who, from, to, when and why."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT from_state, to_state, actor, reason, at FROM audit_log"
        " WHERE entity_type = $1 AND entity_id = $2 ORDER BY id",
        ENTITY,
        request_id,
    )
    return rows


async def list_requests(
    conn: Connection,
    *,
    status: ExchangeStatus | None = None,
    assignee: str | None = None,
    merchant_id: str | None = None,
    customer_id: str | None = None,
    limit: int = 100,
) -> list[asyncpg.Record]:
    """Requests matching every filter given, oldest first (the desk's queue order)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {COLUMNS} FROM exchange_requests"
        " WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR assignee = $2)"
        " AND ($3::text IS NULL OR merchant_id = $3) AND ($4::text IS NULL OR customer_id = $4)"
        " ORDER BY created_at, id LIMIT $5",
        status,
        assignee,
        merchant_id,
        customer_id,
        limit,
    )
    return rows


async def _transition(
    conn: Connection, request_id: str, decide: Decision, *, actor: str, reason: str | None
) -> asyncpg.Record:
    """Read the row, let ``decide`` check its precondition on what it read, then write and audit
    in one transaction, but only if the row is still at the version read: the UPDATE takes the
    row lock and checks the version under it. If another transition committed in between, what
    it left is read and decided on again.

    So a claim that lost the race holds no lock while the api answers it: it waits in its
    UPDATE for the winner's commit, finds nothing to update, and reads the winner. (Locking the
    row with ``SELECT … FOR UPDATE`` first would keep every loser holding it for a round trip
    through a busy api, one after the other.)"""
    while True:
        row = await conn.fetchrow(
            "SELECT id, status, assignee, version FROM exchange_requests WHERE id = $1",
            request_id,
        )
        if row is None:
            raise OperatorError(404, f"no exchange request {request_id!r}")
        status, assignee = decide(row)
        async with conn.transaction():
            moved = await _move(
                conn,
                request_id,
                row["status"],
                status,
                assignee,
                actor=actor,
                reason=reason,
                version=row["version"],
            )
        if moved is not None:
            return moved


async def _move(
    conn: Connection,
    request_id: str,
    old: str,
    new: ExchangeStatus,
    assignee: str | None,
    *,
    actor: str,
    reason: str | None,
    version: int,
) -> asyncpg.Record | None:
    """Move the request from ``old`` to ``new`` if it is still at ``version`` (else None)."""
    EXCHANGE_TRANSITIONS.check(old, new)
    row = await conn.fetchrow(
        "UPDATE exchange_requests SET status = $2, assignee = $3, version = version + 1,"
        " updated_at = clock_timestamp() WHERE id = $1 AND version = $4"
        f" RETURNING {COLUMNS}",
        request_id,
        new,
        assignee,
        version,
    )
    if row is not None:
        await _record(conn, row, old, new, actor=actor, reason=reason)
    return row


CUSTOMER_FIELDS = (
    "id",
    "merchant_id",
    "customer_id",
    "from_amount",
    "from_currency",
    "to_currency",
    "quote",
    "status",
    "created_at",
    "updated_at",
    "version",
)
"""What a request's own feed (its customer's view) shows: nothing about who works it."""
DESK_FIELDS = (*CUSTOMER_FIELDS, "assignee", "created_by")
"""What the operators' desk feed shows of a request."""


def transition_event_ids(
    row: Mapping[str, Any] | asyncpg.Record, *, created: bool = False
) -> list[str]:
    """The feed events (desk and request topics) of the transition that left ``row`` as it is;
    with ``created``, of every transition so far (a new request's two). Publish them after the
    commit with :func:`core.feeds.publish_events`."""
    first = 1 if created else row["version"]
    return [f"{row['id']}.v{version}" for version in range(first, row["version"] + 1)]


async def _record(
    conn: Connection,
    row: asyncpg.Record,
    old: str | None,
    new: str,
    *,
    actor: str,
    reason: str | None,
) -> None:
    """Audit a transition and append it to the desk's feed and the request's own, in the
    caller's transaction (so a watcher sees exactly the committed transitions, in order)."""
    await audit(conn, ENTITY, row["id"], old, new, actor=actor, reason=reason)
    event_id, type_ = f"{row['id']}.v{row['version']}", f"exchange_request.{new}"
    request = {f: _json_value(row[f]) for f in DESK_FIELDS}
    desk = {"request": request, "from": old, "to": new, "actor": actor, "reason": reason}
    customer = {"request": {f: request[f] for f in CUSTOMER_FIELDS}, "from": old, "to": new}
    await feeds.append(
        conn,
        type_,
        {feeds.Topic.desk(): desk, feeds.Topic.request(row["id"]): customer},
        event_id=event_id,
    )


def _json_value(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def _require_assignee(row: asyncpg.Record, actor: Actor, what: str) -> None:
    if row["assignee"] != actor.name:
        holder = f"assigned to {row['assignee']}" if row["assignee"] else "not assigned"
        raise ExchangeConflict(
            f"exchange request {row['id']} is {holder}; only its assignee may have it {what}",
            status=row["status"],
            assignee=row["assignee"],
        )


def _conflict(row: asyncpg.Record, what: str) -> ExchangeConflict:
    held = f", assigned to {row['assignee']}" if row["assignee"] else ""
    return ExchangeConflict(
        f"exchange request {row['id']} {what}: it is {row['status']}{held}",
        status=row["status"],
        assignee=row["assignee"],
    )
