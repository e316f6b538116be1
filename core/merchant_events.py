"""Merchant events as they leave Postgres: the one JSON shape every consumer sees, and the reads.

The publish activity sends this shape to Redis, the gateway replays it from Postgres on resume
and after gaps, and the api's sync endpoint returns it, so a client cannot tell which path an
event took. The ``events`` table gives each merchant a gapless ``seq``; every writer (the ledger,
the escrow saga) appends through :func:`append_merchant_event`, which allocates it under the
merchant row's lock, so seq *n* existing means every seq below *n* is committed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from core.db import Connection

__all__ = [
    "append_merchant_event",
    "derive_seq_prefix",
    "encode_merchant_event",
    "events_after",
    "head_seq",
    "heads_and_events_after",
    "seq_prefix",
]

_COLUMNS = "merchant_id, seq, event_id, type, data, created_at"


async def append_merchant_event(
    conn: Connection, merchant_id: str, event_id: str, type_: str, data: Mapping[str, Any]
) -> int:
    """Append one event to the merchant's feed in the caller's transaction; returns its ``seq``
    (the next one, allocated under the merchant row's lock until the transaction ends)."""
    seq: int = await conn.fetchval(
        "UPDATE merchants SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
        merchant_id,
    )
    await conn.execute(
        "INSERT INTO events (merchant_id, seq, event_id, type, data) VALUES ($1, $2, $3, $4, $5)",
        merchant_id,
        seq,
        event_id,
        type_,
        dict(data),
    )
    return seq


def encode_merchant_event(row: Mapping[str, Any] | asyncpg.Record) -> str:
    """``{merchant_id, seq, event_id, type, data, occurred_at}`` as compact JSON."""
    return json.dumps(
        {
            "merchant_id": row["merchant_id"],
            "seq": row["seq"],
            "event_id": row["event_id"],
            "type": row["type"],
            "data": row["data"],
            "occurred_at": row["created_at"].isoformat(),
        },
        separators=(",", ":"),
    )


def seq_prefix(merchant_id: str) -> bytes:
    """How every event of ``merchant_id`` that :func:`encode_merchant_event` encodes begins, up
    to its ``seq`` digits (``{"merchant_id":"m_1","seq":``); see :func:`derive_seq_prefix`."""
    return derive_seq_prefix(encode_merchant_event, "merchant_id", merchant_id)


def derive_seq_prefix(
    encode: Callable[[Mapping[str, Any]], str], name_key: str, name: str
) -> bytes:
    """How every event ``encode`` makes for the feed ``name`` begins, up to its ``seq`` digits,
    derived from the encoder itself (every feed's events share this module's shape, named by
    their first field ``name_key``: ``merchant_id`` here, ``topic`` in :mod:`core.feeds`).

    The gateway reads ``seq`` right after this prefix, up to the next ``,``, without parsing the
    JSON; a payload starting with it is this feed's. ValueError if the encoder no longer puts
    ``name_key`` and then ``seq`` first (the fast path would then be wrong, not slow).
    """
    sample: dict[str, Any] = {
        name_key: name,
        "event_id": "",
        "type": "",
        "data": {},
        "created_at": datetime(2000, 1, 1, tzinfo=UTC),
    }
    first = encode({**sample, "seq": 1}).encode()
    second = encode({**sample, "seq": 2}).encode()
    # Two encodings that differ only in seq (1 and 2) agree up to its digit.
    digit = next(i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b)
    prefix = first[:digit]
    named = json.dumps({name_key: name}, separators=(",", ":")).encode()[:-1]
    if not prefix.startswith(named) or not first[len(prefix) :].startswith(b"1,"):
        raise ValueError(f"the encoder no longer starts with {name_key}, then seq")
    return prefix


async def events_after(
    conn: Connection | asyncpg.Pool,
    merchant_id: str,
    after_seq: int,
    *,
    up_to: int | None = None,
    limit: int = 500,
) -> list[asyncpg.Record]:
    """One merchant's events with ``after_seq < seq <= up_to``, in seq order, at most ``limit``."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_COLUMNS} FROM events WHERE merchant_id = $1 AND seq > $2"
        " AND ($3::bigint IS NULL OR seq <= $3) ORDER BY seq LIMIT $4",
        merchant_id,
        after_seq,
        up_to,
        limit,
    )
    return rows


async def heads_and_events_after(
    conn: Connection | asyncpg.Pool, heads: Mapping[str, int], *, limit_per_merchant: int = 500
) -> list[asyncpg.Record]:
    """For many merchants at once, the events after each one's seq (one round trip).

    Ordered by merchant then seq; at most ``limit_per_merchant`` per merchant, so a caller
    catching up loops until a merchant returns fewer.
    """
    merchant_ids: Sequence[str] = list(heads)
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT e.merchant_id, e.seq, e.event_id, e.type, e.data, e.created_at"
        " FROM unnest($1::text[], $2::bigint[])"
        " AS h(merchant_id, head) CROSS JOIN LATERAL ("
        f" SELECT {_COLUMNS} FROM events WHERE events.merchant_id = h.merchant_id"
        "  AND events.seq > h.head ORDER BY seq LIMIT $3) AS e"
        " ORDER BY e.merchant_id, e.seq",
        merchant_ids,
        [heads[m] for m in merchant_ids],
        limit_per_merchant,
    )
    return rows


async def head_seq(conn: Connection | asyncpg.Pool, merchant_id: str) -> int:
    """The merchant's latest committed seq (0 before its first event)."""
    seq: int | None = await conn.fetchval(
        "SELECT max(seq) FROM events WHERE merchant_id = $1", merchant_id
    )
    return seq or 0
