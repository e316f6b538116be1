"""Merchant events as they leave Postgres: the one JSON shape every consumer sees, and the reads.

The publish activity sends this shape to Redis, the gateway replays it from Postgres on resume
and after gaps, and the api's sync endpoint returns it, so a client cannot tell which path an
event took. The ``events`` table gives each merchant a gapless ``seq``; every writer (the ledger,
the escrow saga) appends through :func:`append_merchant_event`, which allocates it under the
merchant row's lock, so seq *n* existing means every seq below *n* is committed.

Every other feed (:mod:`core.feeds`) keeps its events in this shape too, named by another first
field, so the encoding (:func:`encode_event`), the seq prefix (:func:`derive_seq_prefix`) and the
reads (:class:`EventTable`) are written once here for all of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from core.db import Connection

__all__ = [
    "MERCHANT_EVENT_TABLE",
    "EventTable",
    "append_merchant_event",
    "derive_seq_prefix",
    "encode_event",
    "encode_merchant_event",
    "events_after",
    "seq_prefix",
]


async def append_merchant_event(
    conn: Connection, merchant_id: str, event_id: str, type_: str, data: Mapping[str, Any]
) -> int:
    """Append one event to the merchant's feed in the caller's transaction; returns its ``seq``
    (the next one, allocated under the merchant row's lock until the transaction ends).

    Every writer of the merchant waits for that lock, so one statement takes it and writes the
    event; a caller that makes this its last statement before COMMIT (the escrow transitions
    do) holds the lock for no client round trip but the COMMIT's."""
    seq: int | None = await conn.fetchval(
        "WITH next AS (UPDATE merchants SET last_seq = last_seq + 1 WHERE id = $1"
        " RETURNING last_seq)"
        " INSERT INTO events (merchant_id, seq, event_id, type, data)"
        " SELECT $1, next.last_seq, $2::text, $3::text, $4::jsonb FROM next RETURNING seq",
        merchant_id,
        event_id,
        type_,
        dict(data),
    )
    if seq is None:
        raise ValueError(f"no merchant {merchant_id!r} to append {event_id!r} to")
    return seq


def encode_event(name_key: str, row: Mapping[str, Any] | asyncpg.Record) -> str:
    """``{<name_key>, seq, event_id, type, data, occurred_at}`` as compact JSON: every feed's
    events, named by their first field (``merchant_id`` here, ``topic`` in :mod:`core.feeds`)."""
    return json.dumps(
        {
            name_key: row[name_key],
            "seq": row["seq"],
            "event_id": row["event_id"],
            "type": row["type"],
            "data": row["data"],
            "occurred_at": row["created_at"].isoformat(),
        },
        separators=(",", ":"),
    )


def encode_merchant_event(row: Mapping[str, Any] | asyncpg.Record) -> str:
    """``{merchant_id, seq, event_id, type, data, occurred_at}`` as compact JSON."""
    return encode_event("merchant_id", row)


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


@dataclass(frozen=True)
class EventTable:
    """A table of feed events, each feed named by the column ``name_key`` and numbered by its own
    gapless ``seq`` (``events`` by ``merchant_id``; ``feed_events`` by ``topic``): the reads
    every feed's events share."""

    table: str
    name_key: str

    @property
    def columns(self) -> str:
        """The columns an event row is read with (what :func:`encode_event` takes)."""
        return f"{self.name_key}, seq, event_id, type, data, created_at"

    async def events_after(
        self,
        conn: Connection | asyncpg.Pool,
        name: str,
        after_seq: int,
        *,
        up_to: int | None = None,
        limit: int = 500,
    ) -> list[asyncpg.Record]:
        """Feed ``name``'s events with ``after_seq < seq <= up_to``, in seq order, at most
        ``limit``."""
        rows: list[asyncpg.Record] = await conn.fetch(
            f"SELECT {self.columns} FROM {self.table} WHERE {self.name_key} = $1 AND seq > $2"
            " AND ($3::bigint IS NULL OR seq <= $3) ORDER BY seq LIMIT $4",
            name,
            after_seq,
            up_to,
            limit,
        )
        return rows

    async def heads_and_events_after(
        self, conn: Connection | asyncpg.Pool, heads: Mapping[str, int], *, limit_per_feed: int
    ) -> list[asyncpg.Record]:
        """For many feeds at once (by name), the events after each one's seq (one round trip).

        Ordered by feed then seq; at most ``limit_per_feed`` per feed, so a caller catching up
        loops until a feed returns fewer.
        """
        name, table = self.name_key, self.table
        rows: list[asyncpg.Record] = await conn.fetch(
            f"SELECT e.{name}, e.seq, e.event_id, e.type, e.data, e.created_at"
            f" FROM unnest($1::text[], $2::bigint[]) AS h({name}, head) CROSS JOIN LATERAL ("
            f" SELECT {self.columns} FROM {table} WHERE {table}.{name} = h.{name}"
            f"  AND {table}.seq > h.head ORDER BY seq LIMIT $3) AS e"
            f" ORDER BY e.{name}, e.seq",
            list(heads),
            list(heads.values()),
            limit_per_feed,
        )
        return rows

    async def head(self, conn: Connection | asyncpg.Pool, name: str) -> int:
        """Feed ``name``'s latest committed seq (0 before its first event)."""
        # The committed head, not the feed's counter (merchants.last_seq, feed_heads.last_seq):
        # that row may be ahead, locked by a transaction that has not committed yet.
        seq: int | None = await conn.fetchval(
            f"SELECT max(seq) FROM {self.table} WHERE {self.name_key} = $1", name
        )
        return seq or 0


MERCHANT_EVENT_TABLE = EventTable("events", "merchant_id")


async def events_after(
    conn: Connection | asyncpg.Pool,
    merchant_id: str,
    after_seq: int,
    *,
    up_to: int | None = None,
    limit: int = 500,
) -> list[asyncpg.Record]:
    """One merchant's events with ``after_seq < seq <= up_to``, in seq order, at most ``limit``."""
    return await MERCHANT_EVENT_TABLE.events_after(
        conn, merchant_id, after_seq, up_to=up_to, limit=limit
    )
