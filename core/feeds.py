"""Feeds: the topics a dashboard client can follow live, and where each one's events live.

A :class:`Topic` is a kind and an id: ``merchant:<id>`` (a merchant's payments, refunds,
balances), ``desk`` (the operators' exchange desk, one global topic) and ``request:<id>`` (one
exchange request, its customer's view). Each topic has its own gapless ``seq``, Redis channel,
replay from Postgres and token scope; the gateway serves them all through one
:class:`FeedSource` interface and never asks which kind it holds.

Two sources implement it. Merchant topics stay on the ``events`` table (deliveries, the sync
endpoint and the dashboard read it) with their wire format unchanged
(:mod:`core.merchant_events`). Every other topic lives in ``feed_events`` (migration 0008) and
travels as ``{topic, seq, event_id, type, data, occurred_at}``: the same shape, named by
``topic`` where a merchant event has ``merchant_id``.

:func:`append` adds an event to a desk or request topic in the caller's transaction, its seq
taken from the topic's ``feed_heads`` row under that row's lock, so seq *n* committed means
every seq below is committed (what the gateway's gap fill relies on, as for merchants);
:func:`publish_events` sends committed events to Redis once the transaction is over.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.contracts import merchant_channel
from core.db import DATABASE_UNREACHABLE, Connection
from core.merchant_events import MERCHANT_EVENT_TABLE, EventTable, derive_seq_prefix, encode_event

__all__ = [
    "MERCHANT_EVENTS",
    "TOPIC_EVENTS",
    "FeedSource",
    "Topic",
    "TopicKind",
    "append",
    "encode_feed_event",
    "publish_events",
]

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "switchboard:"
PUBLISH_TIMEOUT_SECONDS = 1.0
"""A transition is committed before it is published: a hung Redis must not hold its answer.
What is not published reaches clients from Postgres (the gateway's position check)."""
PUBLISH_FAILURES: tuple[type[BaseException], ...] = (RedisError, *DATABASE_UNREACHABLE)


class TopicKind(StrEnum):
    MERCHANT = "merchant"
    DESK = "desk"
    REQUEST = "request"


@dataclass(frozen=True)
class Topic:
    """One feed: its kind and id (``""`` for the desk, which has one global topic)."""

    kind: TopicKind
    id: str = ""

    def __post_init__(self) -> None:
        if (self.kind is TopicKind.DESK) != (self.id == ""):
            raise ValueError(f"a {self.kind} topic {'has no' if self.id else 'needs an'} id")

    @classmethod
    def merchant(cls, merchant_id: str) -> Topic:
        return cls(TopicKind.MERCHANT, merchant_id)

    @classmethod
    def desk(cls) -> Topic:
        return cls(TopicKind.DESK)

    @classmethod
    def request(cls, request_id: str) -> Topic:
        return cls(TopicKind.REQUEST, request_id)

    @classmethod
    def parse(cls, key: str) -> Topic:
        """The topic a :attr:`key` names; ValueError for anything else."""
        kind, _, topic_id = key.partition(":")
        return cls(TopicKind(kind), topic_id)

    @property
    def key(self) -> str:
        """``merchant:<id>``, ``desk`` or ``request:<id>``: the name in tokens and on the wire."""
        return self.kind.value if self.kind is TopicKind.DESK else f"{self.kind}:{self.id}"

    @property
    def source(self) -> FeedSource:
        return MERCHANT_EVENTS if self.kind is TopicKind.MERCHANT else TOPIC_EVENTS


class FeedSource(abc.ABC):
    """Where a kind of topic keeps its events and how they travel: what the gateway needs."""

    table: EventTable
    """The table holding this kind's events, each topic's under :meth:`name`."""

    @property
    def name_key(self) -> str:
        """The first field of every encoded event (its table's name column), naming its topic."""
        return self.table.name_key

    @abc.abstractmethod
    def name(self, topic: Topic) -> str:
        """The value of :attr:`name_key` in ``topic``'s events."""

    @abc.abstractmethod
    def channel(self, topic: Topic) -> str:
        """The Redis pub/sub channel carrying ``topic``'s events."""

    @abc.abstractmethod
    def topic_of(self, row: Mapping[str, Any] | asyncpg.Record) -> Topic:
        """The topic an event row (of this source) belongs to."""

    def encode(self, row: Mapping[str, Any] | asyncpg.Record) -> str:
        """An event row as the compact JSON every client receives."""
        return encode_event(self.name_key, row)

    async def events_after(
        self,
        conn: Connection | asyncpg.Pool,
        topic: Topic,
        after_seq: int,
        *,
        up_to: int | None = None,
        limit: int = 500,
    ) -> list[asyncpg.Record]:
        """``topic``'s events with ``after_seq < seq <= up_to``, in seq order, at most ``limit``."""
        return await self.table.events_after(
            conn, self.name(topic), after_seq, up_to=up_to, limit=limit
        )

    async def head(self, conn: Connection | asyncpg.Pool, topic: Topic) -> int:
        """``topic``'s latest committed seq (0 before its first event)."""
        return await self.table.head(conn, self.name(topic))

    async def heads_and_events_after(
        self, conn: Connection | asyncpg.Pool, heads: Mapping[Topic, int], *, limit_per_topic: int
    ) -> list[asyncpg.Record]:
        """For many topics at once, the events after each one's seq (one round trip), at most
        ``limit_per_topic`` each: a caller catching up loops until a topic returns fewer."""
        return await self.table.heads_and_events_after(
            conn,
            {self.name(topic): head for topic, head in heads.items()},
            limit_per_feed=limit_per_topic,
        )

    def seq_prefix(self, topic: Topic) -> bytes:
        """How every encoded event of ``topic`` begins, up to its seq digits (the gateway's
        hot path reads seq after it without parsing; see
        :func:`core.merchant_events.derive_seq_prefix`)."""
        return derive_seq_prefix(self.encode, self.name_key, self.name(topic))


class _MerchantEvents(FeedSource):
    """Merchant topics: the ``events`` table and its wire format, as they have always been."""

    table = MERCHANT_EVENT_TABLE

    def name(self, topic: Topic) -> str:
        return topic.id

    def channel(self, topic: Topic) -> str:
        return merchant_channel(topic.id)

    def topic_of(self, row: Mapping[str, Any] | asyncpg.Record) -> Topic:
        return Topic.merchant(row["merchant_id"])


_FEED_EVENT_TABLE = EventTable("feed_events", "topic")
_TOPIC_COLUMNS = _FEED_EVENT_TABLE.columns


def encode_feed_event(row: Mapping[str, Any] | asyncpg.Record) -> str:
    """``{topic, seq, event_id, type, data, occurred_at}`` as compact JSON."""
    return encode_event("topic", row)


class _TopicEvents(FeedSource):
    """Desk and request topics: the ``feed_events`` table, keyed by the topic's key."""

    table = _FEED_EVENT_TABLE

    def name(self, topic: Topic) -> str:
        return topic.key

    def channel(self, topic: Topic) -> str:
        return f"{CHANNEL_PREFIX}{topic.key}"

    def topic_of(self, row: Mapping[str, Any] | asyncpg.Record) -> Topic:
        return Topic.parse(row["topic"])


MERCHANT_EVENTS: FeedSource = _MerchantEvents()
TOPIC_EVENTS: FeedSource = _TopicEvents()


async def append(
    conn: Connection,
    type_: str,
    data_by_topic: Mapping[Topic, Mapping[str, Any]],
    *,
    event_id: str,
) -> list[asyncpg.Record]:
    """Append one event (``event_id``, ``type_``) to each desk or request topic given, with that
    topic's ``data``, inside the caller's transaction and in one statement: each gets its
    topic's next seq, under the topic's ``feed_heads`` row lock until commit, the locks taken in
    the mapping's order (keep one order, desk first, so transactions never deadlock). Publish
    them once committed (:func:`publish_events`); until then nobody can see them.

    Merchant events are the ledger's to append (``events``); ValueError for a merchant topic.
    """
    if any(topic.kind is TopicKind.MERCHANT for topic in data_by_topic):
        raise ValueError("merchant events are appended by the ledger, not core.feeds")
    rows: list[asyncpg.Record] = await conn.fetch(
        "WITH heads AS (INSERT INTO feed_heads AS h (topic, last_seq)"
        " SELECT topic, 1 FROM unnest($1::text[]) WITH ORDINALITY AS t(topic, n) ORDER BY n"
        " ON CONFLICT (topic) DO UPDATE SET last_seq = h.last_seq + 1"
        " RETURNING topic, last_seq)"
        " INSERT INTO feed_events (topic, seq, event_id, type, data)"
        " SELECT heads.topic, heads.last_seq, $2, $3, d.data::jsonb FROM heads"
        " JOIN unnest($1::text[], $4::text[]) AS d(topic, data) USING (topic)"
        f" RETURNING {_TOPIC_COLUMNS}",
        [topic.key for topic in data_by_topic],
        event_id,
        type_,
        [json.dumps(data, separators=(",", ":")) for data in data_by_topic.values()],
    )
    return rows


async def publish_events(
    conn: Connection | asyncpg.Pool, redis: Redis, event_ids: Sequence[str]
) -> int:
    """Publish the committed feed events with these ids (every topic that has them) to Redis,
    in one pipeline; returns how many were published.

    Reads them back rather than taking them from the appending transaction, so only committed
    events ever travel: a rolled-back append's seq is handed out again. Publishing twice is
    harmless (clients drop a seq they have). A failure (Redis or Postgres unreachable, either
    slower than ``PUBLISH_TIMEOUT_SECONDS``) is logged, not raised: the events are committed,
    and the gateway reads what Redis lost from Postgres (its position check).
    """
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            rows = await conn.fetch(
                f"SELECT {_TOPIC_COLUMNS} FROM feed_events WHERE event_id = ANY($1::text[])"
                " ORDER BY topic, seq",
                list(event_ids),
            )
            if not rows:
                return 0
            async with redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.publish(
                        TOPIC_EVENTS.channel(Topic.parse(row["topic"])), encode_feed_event(row)
                    )
                await pipe.execute()
    except PUBLISH_FAILURES as error:
        log.warning("could not publish feed events %s: %r", list(event_ids), error)
        return 0
    return len(rows)
