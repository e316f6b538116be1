"""One Redis pub/sub connection per gateway instance, kept alive across Redis outages.

:class:`RedisSubscriber` sits on redis-py's asyncio :class:`~redis.asyncio.client.PubSub` and
hands every published message to a plain callback, synchronously, from the one task that reads
the connection. The set of channels is the subscriber's, not the connection's: after a reconnect
(backoff with jitter, ours rather than redis-py's, which is switched off) every channel is
subscribed again, confirmed, and only then is ``on_up`` called, so the caller can refill from
Postgres knowing that anything published from then on also arrives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

__all__ = ["RedisSubscriber"]

log = logging.getLogger(__name__)

MessageHandler = Callable[[bytes, bytes], None]
"""``on_message(channel, payload)``, both as Redis sent them."""

CONNECTION_ERRORS = (RedisError, OSError, TimeoutError)


class _Session:
    """One connection's PubSub, its reader and its command sender.

    Commands go through one queue and one sender task, so they reach Redis in the order they
    were asked for (an UNSUBSCRIBE never overtakes a later SUBSCRIBE of the same channel):
    redis-py's writes may suspend before the bytes leave.

    The tasks stop when ``lost`` resolves, not only when cancelled: redis-py bounds each write
    with ``asyncio.wait_for``, which in Python 3.11 can swallow a cancellation that arrives as
    the write completes (it did, under uvloop, and the process never exited on SIGTERM).
    """

    def __init__(self, pubsub: PubSub, timeout: float) -> None:
        self.pubsub = pubsub
        self.timeout = timeout
        self.outbox: deque[tuple[str, tuple[str, ...]]] = deque()
        self.wakeup = asyncio.Event()
        self.confirmations: dict[bytes, deque[asyncio.Future[None]]] = {}
        self.pongs: deque[asyncio.Future[None]] = deque()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.tasks: list[asyncio.Task[None]] = []

    def send(self, command: str, *channels: str) -> None:
        self.outbox.append((command, channels))
        self.wakeup.set()

    def expect_confirmation(self, channel: str) -> asyncio.Future[None]:
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.confirmations.setdefault(channel.encode(), deque()).append(confirmed)
        return confirmed

    def end(self, error: BaseException | None = None) -> None:
        if not self.lost.done():
            if error is not None:
                log.warning("lost the Redis subscription connection: %r", error)
            self.lost.set_result(None)
            self.wakeup.set()

    async def close(self) -> None:
        self.end()
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=self.timeout)
        for waiters in self.confirmations.values():
            for waiter in waiters:
                waiter.cancel()
        for pong in self.pongs:
            pong.cancel()
        with contextlib.suppress(*CONNECTION_ERRORS):
            async with asyncio.timeout(self.timeout):
                await self.pubsub.aclose()  # type: ignore[no-untyped-call]


class RedisSubscriber:
    """Subscribes to channels on one connection and calls ``on_message(channel, payload)``.

    ``run`` keeps the connection up until cancelled. ``on_up`` runs after every (re)connect once
    all channels are confirmed; ``on_down`` runs when an established connection is lost. A
    connection that does not answer a ping within ``timeout`` counts as lost.
    """

    def __init__(
        self,
        url: str,
        on_message: MessageHandler,
        *,
        on_up: Callable[[], Awaitable[None]],
        on_down: Callable[[], None],
        timeout: float = 2.0,
        keepalive_seconds: float = 5.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        # No retries inside redis-py: a lost connection must end the session, so that the
        # channels are confirmed again and on_up refills before anyone trusts the feed. RESP2:
        # redis-py's pure-Python RESP3 reader costs about 7 µs more per message (no hiredis).
        self._redis: Redis = Redis.from_url(
            url,
            protocol=2,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0, supported_errors=()),
            client_name="switchboard-gateway",
        )
        self._on_message = on_message
        self._on_up = on_up
        self._on_down = on_down
        self._timeout = timeout
        self._keepalive = keepalive_seconds
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self.channels: set[str] = set()
        self._session: _Session | None = None
        self.connected = False
        """True from the moment every channel is confirmed until the connection is lost."""
        self.down_since: float | None = time.monotonic()
        """``time.monotonic()`` when the connection was last lost (or first tried), else None."""

    async def subscribe(self, channel: str) -> None:
        """Add ``channel``; if connected, return once Redis confirmed it (else on reconnect)."""
        self.channels.add(channel)
        session = self._session
        if session is None:
            return
        confirmed = session.expect_confirmation(channel)
        session.send("SUBSCRIBE", channel)
        # A timeout or a lost connection is not an error here: the reconnect subscribes again
        # and calls on_up, which refills every feed.
        await asyncio.wait(
            [confirmed, session.lost], timeout=self._timeout, return_when="FIRST_COMPLETED"
        )

    def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``."""
        self.channels.discard(channel)
        if self._session is not None:
            self._session.send("UNSUBSCRIBE", channel)

    async def run(self) -> None:
        """Connect, subscribe, watch the connection; reconnect with backoff and jitter. Forever."""
        attempt = 0
        try:
            while True:
                session = _Session(self._redis.pubsub(), self._timeout)
                try:
                    await self._connect(session)
                except CONNECTION_ERRORS as error:
                    await session.close()
                    attempt += 1
                    delay = min(self._backoff_max, self._backoff_initial * 2**attempt)
                    log.warning("Redis unreachable (%r); retrying in about %.1f s", error, delay)
                    # Full jitter: instances that lost Redis together do not retry together.
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                    continue
                attempt = 0
                stopping = False
                try:
                    await self._on_up()
                    await self._watch(session)
                except asyncio.CancelledError:
                    stopping = True
                    raise
                finally:
                    self._session = None
                    was_connected, self.connected = self.connected, False
                    self.down_since = time.monotonic()
                    await session.close()
                    if was_connected and not stopping:
                        log.warning("reconnecting to Redis")
                        self._on_down()
        finally:
            await self._redis.aclose()

    async def _connect(self, session: _Session) -> None:
        """Connect, start reading, subscribe every channel and wait until all are confirmed."""
        pubsub = session.pubsub
        try:
            async with asyncio.timeout(self._timeout):
                await pubsub.connect()  # type: ignore[no-untyped-call]
        except TimeoutError as error:
            raise TimeoutError(f"no connection within {self._timeout} s") from error
        session.tasks = [
            asyncio.create_task(self._read(session), name="redis-read"),
            asyncio.create_task(self._send(session), name="redis-send"),
        ]
        self._session = session
        channels = sorted(self.channels)
        waits = [session.expect_confirmation(channel) for channel in channels]
        if channels:
            session.send("SUBSCRIBE", *channels)
        try:
            async with asyncio.timeout(self._timeout):
                for confirmed in waits:
                    await asyncio.wait([confirmed, session.lost], return_when="FIRST_COMPLETED")
                    if session.lost.done():
                        raise ConnectionError("the connection was lost while subscribing")
        except TimeoutError as error:
            raise TimeoutError(f"{len(channels)} subscriptions not confirmed in time") from error
        finally:
            if not all(confirmed.done() for confirmed in waits):
                self._session = None
        self.connected = True
        self.down_since = None

    async def _read(self, session: _Session) -> None:
        """Hand each message to the callback; resolve confirmations and pongs."""
        on_message = self._on_message
        pubsub = session.pubsub
        try:
            while True:
                response: Any = await pubsub.parse_response(block=True)
                kind = response[0] if isinstance(response, list) else response
                if kind == b"message":
                    try:
                        on_message(response[1], response[2])
                    except Exception:
                        # One message the fan-out cannot handle must not cost the subscription.
                        log.exception("failed to handle a message from Redis")
                elif kind == b"subscribe":
                    waiters = session.confirmations.get(response[1])
                    if waiters:
                        waiters.popleft().set_result(None)
                        if not waiters:
                            del session.confirmations[response[1]]
                elif kind in (b"pong", b"PONG"):
                    while session.pongs:
                        pong = session.pongs.popleft()
                        if not pong.done():
                            pong.set_result(None)
        except CONNECTION_ERRORS as error:
            session.end(error)

    async def _send(self, session: _Session) -> None:
        """Send queued commands one at a time, in order."""
        pubsub = session.pubsub
        try:
            while not session.lost.done():
                await session.wakeup.wait()
                session.wakeup.clear()
                while session.outbox and not session.lost.done():
                    command, channels = session.outbox.popleft()
                    if command == "SUBSCRIBE":
                        await pubsub.subscribe(*channels)
                    elif command == "UNSUBSCRIBE":
                        await pubsub.unsubscribe(*channels)
                    else:
                        await pubsub.ping()
        except CONNECTION_ERRORS as error:
            session.end(error)

    async def _watch(self, session: _Session) -> None:
        """Return when the connection is lost or stops answering pings."""
        loop = asyncio.get_running_loop()
        while True:
            # asyncio.wait, not wait_for: it never swallows our own cancellation (see _Session).
            await asyncio.wait([session.lost], timeout=self._keepalive)
            if session.lost.done():
                return
            pong: asyncio.Future[None] = loop.create_future()
            session.pongs.append(pong)
            session.send("PING")
            done, _ = await asyncio.wait(
                [pong, session.lost], timeout=self._timeout, return_when="FIRST_COMPLETED"
            )
            if not done:
                log.warning("Redis did not answer a ping in %.1f s; reconnecting", self._timeout)
                return
