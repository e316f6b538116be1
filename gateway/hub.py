"""Topic feeds: one shared Redis subscription each, in-order fan-out, gap fills, resume.

A :class:`Feed` exists while at least one client of its topic (:class:`core.feeds.Topic`: a
merchant, the exchange desk, one exchange request) is connected to this instance. Every kind is
served the same way, through the topic's :class:`core.feeds.FeedSource` (channel, seq prefix,
encoding, replay from Postgres); the hub never asks which kind it holds. A feed owns its
topic's channel subscription and ``head``: the highest seq it has fanned out, with every seq
up to it fanned out exactly once and in order. Redis pub/sub is at-most-once and publishers
publish out of seq order, so the feed holds back an event that arrives early, gives the missing
ones ``gap_grace`` seconds to arrive on Redis, then reads them from Postgres. That always works
because seq *n* is only committed after every seq below it.

A client joins by replaying from Postgres what it missed, up to the feed's ``head``, and is added
to the live set with no await between the last check of ``head`` and the add: every event the
feed fans out afterwards is above what the replay sent, so nothing falls between the two.

Fan-out is :func:`fan_out`, websockets' ``broadcast`` with the frame built once per event
instead of once per connection (no per-client await either). A client whose unsent bytes pass
``client_buffer_bytes`` is dropped with 3008 instead of slowing the others.

Per event the hot path reads only ``seq`` (after the payload's fixed prefix, which
:meth:`core.feeds.FeedSource.seq_prefix` derives from the encoder, without parsing the JSON),
writes one pre-built frame per connection and counts; the lag histogram takes one event in
``LAG_SAMPLE_EVERY``. The prefix names the topic too (``{"merchant_id":…`` or ``{"topic":…``),
so a payload that has it is this topic's; one that does not is parsed, and dropped (and
counted) if it names another.

Bounds (all close with 3010, after which clients reconnect and resume by seq): a feed holds back
at most ``max_pending_events`` / ``max_pending_bytes`` behind a gap and waits at most
``max_gap_seconds`` without progress for it to fill (Postgres unreachable), then closes its live
clients and is released, so nothing grows without bound and no client stalls silently; a
resuming client is replayed at most ``max_replay_events`` (further behind, it should reload with
the sync endpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from datetime import datetime

import asyncpg
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN

from core.db import DATABASE_UNREACHABLE
from core.feeds import FeedSource, Topic
from gateway.metrics import (
    DELIVERIES,
    DISCONNECTS,
    EVENTS_DROPPED,
    EVENTS_IN,
    GAP_FILLS,
    LAG,
    LAG_SAMPLE_EVERY,
    REPLAYED,
    SUBSCRIPTIONS,
)
from gateway.protocol import CloseCode, control_message
from gateway.redis_feed import RedisSubscriber

__all__ = ["Feed", "Hub", "ReplayTooLong", "ResumeFailed", "TopicFull", "fan_out"]

log = logging.getLogger(__name__)

EVENTS_FROM_REDIS = EVENTS_IN.labels("redis")
EVENTS_FROM_POSTGRES = EVENTS_IN.labels("postgres")
DROPPED_UNREADABLE = EVENTS_DROPPED.labels("unreadable")
DROPPED_OTHER_TOPIC = EVENTS_DROPPED.labels("other_topic")
REPLAY_PAGE = 500
SLOW_CLOSE_SECONDS = 2.0
"""A dropped slow client gets this long to read its close frame before the socket is reset."""


class TopicFull(Exception):
    """This instance already has the most connections allowed for the topic."""


class ResumeFailed(Exception):
    """The events a client missed could not be read from Postgres."""


class ReplayTooLong(ResumeFailed):
    """The client missed more events than a resume replays: it should reload with sync."""


class OtherTopic(ValueError):
    """A payload on a topic's channel that names another topic."""


class Feed:
    """One topic's subscription, ordering state and live connections on this instance."""

    __slots__ = (
        "channel",
        "fill_task",
        "head",
        "live",
        "members",
        "name",
        "name_key",
        "pending",
        "pending_bytes",
        "prefix",
        "ready",
        "source",
        "stalled_since",
        "started",
        "topic",
    )

    def __init__(self, topic: Topic) -> None:
        self.topic = topic
        self.source: FeedSource = topic.source
        self.channel = self.source.channel(topic)
        self.name_key = self.source.name_key
        self.name = self.source.name(topic)
        """What this topic's events carry under ``name_key`` (a merchant id, a topic key)."""
        self.prefix = self.source.seq_prefix(topic)
        """How the source's encoder starts this topic's events."""
        self.head = 0
        self.ready = False
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.live: set[ServerConnection] = set()
        self.members = 0
        """Sessions joined (replaying or live); the feed is released when it drops to zero."""
        self.pending: dict[int, bytes] = {}
        """Events that arrived ahead of ``head + 1``, by seq."""
        self.pending_bytes = 0
        self.stalled_since: float | None = None
        """``time.monotonic()`` since when ``pending`` waits with ``head`` not moving."""
        self.fill_task: asyncio.Task[None] | None = None


class Hub:
    """Every topic feed of this instance; see the module docstring for the guarantees."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        client_buffer_bytes: int,
        gap_grace_seconds: float,
        max_connections_per_topic: int,
        max_gap_seconds: float,
        max_pending_events: int,
        max_pending_bytes: int,
        max_replay_events: int,
    ) -> None:
        self._pool = pool
        self._client_buffer_bytes = client_buffer_bytes
        self._gap_grace = gap_grace_seconds
        self._max_per_topic = max_connections_per_topic
        self._max_gap = max_gap_seconds
        self._max_pending_events = max_pending_events
        self._max_pending_bytes = max_pending_bytes
        self._max_replay = max_replay_events
        self.feeds: dict[Topic, Feed] = {}
        self._by_channel: dict[bytes, Feed] = {}
        self.subscriber: RedisSubscriber | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._lag_countdown = 0

    # -- sessions ---------------------------------------------------------------------------

    async def join(self, connection: ServerConnection, topic: Topic, since_seq: int | None) -> Feed:
        """Replay what the client missed after ``since_seq`` (None: nothing), then make it live.

        Sends ``welcome``, the missed events in order, then ``live``. Raises
        :class:`TopicFull` or :class:`ResumeFailed` (:class:`ReplayTooLong` past
        ``max_replay_events``); on any error the client is not joined.
        """
        feed = self.feeds.get(topic)
        if feed is not None and feed.members >= self._max_per_topic:
            raise TopicFull(topic.key)
        if feed is None:
            feed = self._open_feed(topic)
        feed.members += 1
        try:
            await asyncio.shield(feed.started)
            sent = feed.head if since_seq is None else since_seq
            await connection.send(
                control_message(
                    "welcome",
                    # {"merchant_id": …, "topic": "merchant:…"} or {"topic": "desk"}
                    **{feed.name_key: feed.name, "topic": topic.key},
                    since_seq=sent,
                    head_seq=feed.head,
                )
            )
            sent = await self._replay(connection, feed, sent)
            if self.feeds.get(topic) is not feed:
                # Given up on (a gap it could not fill) while this client was replaying.
                raise ResumeFailed("the feed was reset during the replay")
        except BaseException:
            self.leave(feed, connection)
            raise
        # No await between the replay's last look at feed.head and this add (see module doc).
        feed.live.add(connection)
        broadcast([connection], control_message("live", through_seq=max(sent, feed.head)))
        return feed

    async def _replay(self, connection: ServerConnection, feed: Feed, sent: int) -> int:
        replayed = 0
        since = sent
        while sent < feed.head:
            if feed.head - since > self._max_replay:  # per page: the head moves on meanwhile
                REPLAYED.inc(replayed)
                raise ReplayTooLong(f"more than {self._max_replay} events after seq {since}")
            try:
                rows = await feed.source.events_after(
                    self._pool, feed.topic, sent, up_to=feed.head, limit=REPLAY_PAGE
                )
            except DATABASE_UNREACHABLE as error:
                raise ResumeFailed(str(error)) from error
            if not rows:
                raise ResumeFailed(f"events after {sent} up to {feed.head} are missing")
            for row in rows:
                await connection.send(feed.source.encode(row))
                sent = row["seq"]
            replayed += len(rows)
        REPLAYED.inc(replayed)
        return sent

    def leave(self, feed: Feed, connection: ServerConnection) -> None:
        """Forget a session; the last one out releases the topic's subscription."""
        feed.live.discard(connection)
        feed.members -= 1
        if feed.members <= 0 and self.feeds.get(feed.topic) is feed:
            self._release(feed)

    def connection_count(self) -> int:
        return sum(feed.members for feed in self.feeds.values())

    # -- feed lifecycle ---------------------------------------------------------------------

    def _open_feed(self, topic: Topic) -> Feed:
        feed = Feed(topic)
        self.feeds[topic] = feed
        self._by_channel[feed.channel.encode()] = feed
        SUBSCRIPTIONS.set(len(self.feeds))
        task = asyncio.create_task(self._start(feed))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return feed

    async def _start(self, feed: Feed) -> None:
        """Subscribe first, then read the head: anything committed later arrives on Redis."""
        try:
            if self.subscriber is not None:
                await self.subscriber.subscribe(feed.channel)
            feed.head = await feed.source.head(self._pool, feed.topic)
        except DATABASE_UNREACHABLE as error:
            if self.feeds.get(feed.topic) is feed:
                self._release(feed)
            feed.started.set_exception(ResumeFailed(f"cannot start the feed: {error}"))
            # Mark it retrieved: joiners that already left would otherwise get it logged.
            feed.started.exception()
            return
        feed.ready = True
        self._drain(feed)
        feed.started.set_result(None)

    def _release(self, feed: Feed) -> None:
        del self.feeds[feed.topic]
        if self._by_channel.get(feed.channel.encode()) is feed:
            del self._by_channel[feed.channel.encode()]
            if self.subscriber is not None:
                self.subscriber.unsubscribe(feed.channel)
        if feed.fill_task is not None and feed.fill_task is not asyncio.current_task():
            feed.fill_task.cancel()
        feed.pending.clear()
        feed.pending_bytes = 0
        SUBSCRIPTIONS.set(len(self.feeds))

    # -- events in --------------------------------------------------------------------------

    def on_message(self, channel: bytes, payload: bytes) -> None:
        """An event published on Redis (called synchronously by the subscriber)."""
        feed = self._by_channel.get(channel)
        if feed is None:
            return
        try:
            seq = _seq(feed.prefix, payload, feed.name_key, feed.name)
        except OtherTopic:
            DROPPED_OTHER_TOPIC.inc()
            log.error("dropping another topic's event published on %r", channel)
            return
        if seq is None:
            DROPPED_UNREADABLE.inc()
            log.error("ignoring an unreadable message on %r", channel)
            return
        EVENTS_FROM_REDIS.inc()
        if not feed.ready:
            # Bounded like a gap; what is not kept here the first gap fill reads from Postgres.
            if not self._over_bounds(feed):
                self._hold(feed, seq, payload)
            return
        if seq <= feed.head:
            return
        if seq == feed.head + 1:
            self._deliver(feed, seq, payload)
            self._lag_countdown -= 1
            if self._lag_countdown <= 0:
                self._lag_countdown = LAG_SAMPLE_EVERY
                _observe_lag(payload)
            if feed.pending:
                self._drain(feed)
        else:
            self._hold(feed, seq, payload)
            if self._over_bounds(feed):
                self._give_up(
                    feed, f"{len(feed.pending)} events ({feed.pending_bytes} bytes) held back"
                )
            else:
                self._schedule_fill(feed)

    @staticmethod
    def _hold(feed: Feed, seq: int, payload: bytes) -> None:
        if seq not in feed.pending:
            feed.pending[seq] = payload
            feed.pending_bytes += len(payload)

    def _over_bounds(self, feed: Feed) -> bool:
        return (
            len(feed.pending) > self._max_pending_events
            or feed.pending_bytes > self._max_pending_bytes
        )

    def _give_up(self, feed: Feed, why: str) -> None:
        """The feed cannot stay gapless: close its live clients with 3010 and release it.

        The clients reconnect and resume by seq from Postgres (gapless); the next one opens a
        fresh feed. Sessions still replaying notice in :meth:`join` and are refused.
        """
        log.warning("giving up on the feed of %s: %s", feed.topic.key, why)
        if self.feeds.get(feed.topic) is feed:
            self._release(feed)
        feed.ready = False
        feed.stalled_since = None
        DISCONNECTS.labels("gap").inc(len(feed.live))
        for connection in feed.live:
            self.close_soon(connection, CloseCode.INSUFFICIENT_STATE, "cannot fill a gap")
        feed.live.clear()

    def _deliver(self, feed: Feed, seq: int, payload: bytes) -> None:
        feed.head = seq
        live = feed.live
        if not live:
            return
        sent, slow = fan_out(live, payload, self._client_buffer_bytes)
        DELIVERIES.inc(sent)
        for connection in slow:
            self._drop_slow(feed, connection)

    def _drain(self, feed: Feed) -> None:
        """Fan out the held-back events that are now next; fill from Postgres if a gap remains."""
        pending = feed.pending
        head = feed.head
        while pending:
            payload = pending.pop(feed.head + 1, None)
            if payload is None:
                break
            feed.pending_bytes -= len(payload)
            self._deliver(feed, feed.head + 1, payload)
        for seq in [s for s in pending if s <= feed.head]:
            feed.pending_bytes -= len(pending.pop(seq))
        if not pending:
            feed.stalled_since = None
            return
        if feed.head != head:
            feed.stalled_since = time.monotonic()
        self._schedule_fill(feed)

    def _schedule_fill(self, feed: Feed) -> None:
        if feed.stalled_since is None:
            feed.stalled_since = time.monotonic()
        if feed.fill_task is None or feed.fill_task.done():
            feed.fill_task = asyncio.create_task(self._fill(feed))

    async def _fill(self, feed: Feed) -> None:
        """Read every event up to the latest held-back one from Postgres, in one query.

        Gives up on the feed (:meth:`_give_up`) once ``head`` has not moved for
        ``max_gap_seconds`` with events held back.
        """
        delay = self._gap_grace
        while feed.pending and self.feeds.get(feed.topic) is feed:
            stalled_since = feed.stalled_since
            if stalled_since is None:
                stalled_since = feed.stalled_since = time.monotonic()
            left = stalled_since + self._max_gap - time.monotonic()
            if left <= 0:
                self._give_up(feed, f"a gap after seq {feed.head} unfilled for {self._max_gap} s")
                return
            await asyncio.sleep(min(delay, left))  # late publishes close the gap for free
            if not feed.pending:
                return
            up_to = max(feed.pending) - 1
            if up_to <= feed.head:
                self._drain(feed)
                continue
            try:
                # Bounded too: an unanswered query must not hold the feed past its deadline.
                async with asyncio.timeout(max(1.0, left)):
                    rows = await feed.source.events_after(
                        self._pool, feed.topic, feed.head, up_to=up_to, limit=REPLAY_PAGE
                    )
            except DATABASE_UNREACHABLE as error:
                log.warning("cannot fill a gap for %s from Postgres: %s", feed.topic.key, error)
                delay = min(5.0, max(0.5, delay * 2))
                continue
            GAP_FILLS.inc()
            self._apply_rows(feed.source, rows)
            self._drain(feed)
            delay = self._gap_grace

    def _apply_rows(self, source: FeedSource, rows: list[asyncpg.Record]) -> Counter[Topic]:
        """Deliver the rows that are next for their feeds; how many rows each topic had."""
        per_topic: Counter[Topic] = Counter()
        for row in rows:
            topic = source.topic_of(row)
            per_topic[topic] += 1
            feed = self.feeds.get(topic)
            if feed is not None and feed.ready and row["seq"] == feed.head + 1:
                EVENTS_FROM_POSTGRES.inc()
                self._deliver(feed, row["seq"], source.encode(row).encode())
        return per_topic

    async def resync_all(self) -> None:
        """Bring every feed up to date from Postgres (after a Redis reconnect, or while it is down).

        One query per source and round for all its feeds; raises the database error if
        Postgres is unreachable.
        """
        feeds = [feed for feed in self.feeds.values() if feed.ready]
        while feeds:
            by_source: dict[FeedSource, list[Feed]] = {}
            for feed in feeds:
                by_source.setdefault(feed.source, []).append(feed)
            per_topic: Counter[Topic] = Counter()
            for source, group in by_source.items():
                rows = await source.heads_and_events_after(
                    self._pool,
                    {feed.topic: feed.head for feed in group},
                    limit_per_topic=REPLAY_PAGE,
                )
                per_topic.update(self._apply_rows(source, rows))
            for feed in feeds:
                self._drain(feed)
            feeds = [f for f in feeds if per_topic[f.topic] >= REPLAY_PAGE and f.ready]

    # -- disconnects ------------------------------------------------------------------------

    def _drop_slow(self, feed: Feed, connection: ServerConnection) -> None:
        feed.live.discard(connection)
        DISCONNECTS.labels("slow").inc()
        self.close_soon(connection, CloseCode.SLOW_CONSUMER, "slow consumer")

    def close_soon(self, connection: ServerConnection, code: int, reason: str) -> None:
        """Close without waiting; a peer that does not read its close frame in time is reset."""
        task = asyncio.create_task(close_or_abort(connection, code, reason, SLOW_CLOSE_SECONDS))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def close_or_abort(
    connection: ServerConnection, code: int, reason: str, timeout: float
) -> None:
    """Close with ``code``; reset the TCP connection if the peer does not finish in ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            await connection.close(code, reason)
    except TimeoutError:
        connection.transport.abort()


def fan_out(
    connections: set[ServerConnection], payload: bytes, buffer_limit: int
) -> tuple[int, list[ServerConnection]]:
    """Send ``payload`` as a text frame to every open connection, without awaiting.

    What :func:`websockets.asyncio.server.broadcast` does, except that the frame is serialized
    once rather than once per connection (it is the same bytes for all: server frames are not
    masked and compression is off), and that one pass also finds the connections whose write
    buffer is over ``buffer_limit``. Like ``broadcast``, it skips connections that are not
    open or are sending a fragmented message (the gateway never does), and has no backpressure.
    Returns how many connections it wrote to, and the slow ones.
    """
    frame = Frame(Opcode.TEXT, payload).serialize(mask=False)
    sent = 0
    slow = []
    for connection in connections:
        if connection.protocol.state is not OPEN or connection.send_in_progress is not None:
            continue
        transport = connection.transport
        transport.write(frame)
        sent += 1
        if transport.get_write_buffer_size() > buffer_limit:
            slow.append(connection)
    return sent, slow


def _seq(prefix: bytes, payload: bytes, name_key: str, name: str) -> int | None:
    """The event's seq: read after its known prefix if it has it, else from the parsed JSON.

    The prefix starts with ``{"<name_key>":<name>`` (``{"merchant_id":"m_1"``, ``{"topic":
    "desk"``), so a payload that has it is this topic's without a parse. Otherwise the parsed
    payload must carry ``name`` under ``name_key`` (else :class:`OtherTopic`). None if there is
    no readable seq.
    """
    if payload.startswith(prefix):
        start = len(prefix)
        end = payload.find(b",", start)
        with contextlib.suppress(ValueError):
            return int(payload[start:end])
    try:
        body = json.loads(payload)
        seq = body["seq"]
        named = body.get(name_key)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
    if named != name:
        raise OtherTopic(named)
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _observe_lag(payload: bytes) -> None:
    with contextlib.suppress(KeyError, TypeError, ValueError):
        occurred_at = json.loads(payload)["occurred_at"]
        LAG.observe(time.time() - datetime.fromisoformat(occurred_at).timestamp())
