"""One Redis pub/sub connection per gateway instance, kept alive across Redis outages.

:class:`RedisSubscriber` speaks just enough RESP for ``AUTH``, ``SUBSCRIBE``, ``UNSUBSCRIBE`` and
``PING`` over one asyncio protocol, and hands every published message to a plain callback
without awaiting: the hot path from the socket to the fan-out has no task switch. The set of
channels is the subscriber's, not the connection's: after a reconnect (backoff with jitter) every
channel is subscribed again, confirmed, and only then is ``on_up`` called, so the caller can
refill from Postgres knowing that anything published from then on also arrives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import unquote, urlsplit

__all__ = ["RedisSubscriber"]

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]


class _Incomplete(Exception):
    """The buffer ends inside a reply; wait for more bytes."""


class _ReplyError(Exception):
    """Redis answered ``-ERR ...``."""


def _parse(buffer: bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2 value starting at ``pos``, and the position after it."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buffer[pos]
    if kind == 0x24:  # $ bulk string
        length = int(buffer[pos + 1 : end])
        if length < 0:
            return None, end + 2
        start = end + 2
        if len(buffer) < start + length + 2:
            raise _Incomplete
        return bytes(buffer[start : start + length]), start + length + 2
    if kind == 0x2A:  # * array
        count = int(buffer[pos + 1 : end])
        pos = end + 2
        items = []
        for _ in range(max(count, 0)):
            item, pos = _parse(buffer, pos)
            items.append(item)
        return items, pos
    if kind == 0x3A:  # : integer
        return int(buffer[pos + 1 : end]), end + 2
    if kind == 0x2B:  # + simple string
        return bytes(buffer[pos + 1 : end]), end + 2
    if kind == 0x2D:  # - error
        return _ReplyError(buffer[pos + 1 : end].decode(errors="replace")), end + 2
    raise ValueError(f"unexpected RESP type byte {kind!r}")


def _command(*parts: str) -> bytes:
    encoded = [part.encode() for part in parts]
    out = [b"*%d\r\n" % len(encoded)]
    for part in encoded:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class _PubSubProtocol(asyncio.Protocol):
    def __init__(self, owner: RedisSubscriber) -> None:
        self.owner = owner
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        try:
            while pos < len(buffer):
                value, pos = _parse(buffer, pos)
                try:
                    self.owner._dispatch(value)
                except Exception:
                    # One message the fan-out cannot handle must not cost the subscription.
                    log.exception("failed to handle a message from Redis")
        except _Incomplete:
            pass
        except ValueError:
            log.exception("unreadable reply from Redis; reconnecting")
            if self.transport is not None:
                self.transport.abort()
        del buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class RedisSubscriber:
    """Subscribes to channels on one connection and calls ``on_message(channel, payload)``.

    ``run`` keeps the connection up until cancelled. ``on_up`` runs after every (re)connect once
    all channels are confirmed; ``on_down`` runs when an established connection is lost.
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
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._tls = parts.scheme == "rediss"
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._on_message = on_message
        self._on_up = on_up
        self._on_down = on_down
        self._timeout = timeout
        self._keepalive = keepalive_seconds
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self.channels: set[str] = set()
        self._confirmations: dict[str, list[asyncio.Future[None]]] = {}
        self._replies: list[asyncio.Future[Any]] = []
        self._pongs: list[asyncio.Future[None]] = []
        self._protocol: _PubSubProtocol | None = None
        self.connected = False
        """True from the moment every channel is confirmed until the connection is lost."""
        self.down_since: float | None = time.monotonic()
        """``time.monotonic()`` when the connection was last lost (or first tried), else None."""

    async def subscribe(self, channel: str) -> None:
        """Add ``channel``; if connected, return once Redis confirmed it (else on reconnect)."""
        self.channels.add(channel)
        protocol = self._protocol
        if protocol is None:
            return
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(channel, []).append(confirmed)
        protocol.write(_command("SUBSCRIBE", channel))
        # A timeout or a lost connection is not an error here: the reconnect subscribes again
        # and calls on_up, which refills every feed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait(
                [confirmed, protocol.lost], timeout=self._timeout, return_when="FIRST_COMPLETED"
            )

    def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``."""
        self.channels.discard(channel)
        if self._protocol is not None:
            self._protocol.write(_command("UNSUBSCRIBE", channel))

    async def run(self) -> None:
        """Connect, subscribe, watch the connection; reconnect with backoff and jitter. Forever."""
        attempt = 0
        while True:
            try:
                protocol = await self._connect()
            except (OSError, TimeoutError, _ReplyError) as error:
                attempt += 1
                delay = min(self._backoff_max, self._backoff_initial * 2**attempt)
                log.warning("Redis unreachable (%s); retrying in about %.1f s", error, delay)
                # Full jitter: instances that lost Redis together do not retry together.
                await asyncio.sleep(random.uniform(delay / 2, delay))
                continue
            attempt = 0
            stopping = False
            try:
                await self._on_up()
                await self._watch(protocol)
            except asyncio.CancelledError:
                stopping = True
                raise
            finally:
                self._protocol = None
                was_connected, self.connected = self.connected, False
                self.down_since = time.monotonic()
                if protocol.transport is not None:
                    protocol.transport.abort()
                self._fail_waiters()
                if was_connected and not stopping:
                    log.warning("lost the Redis subscription connection; reconnecting")
                    self._on_down()

    async def _connect(self) -> _PubSubProtocol:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout):
            _, protocol = await loop.create_connection(
                lambda: _PubSubProtocol(self), self._host, self._port, ssl=self._tls or None
            )
        try:
            if self._password is not None:
                auth = (
                    ("AUTH", self._username, self._password)
                    if self._username
                    else (
                        "AUTH",
                        self._password,
                    )
                )
                reply = await self._request(protocol, _command(*auth))
                if isinstance(reply, _ReplyError):
                    raise reply
            self._protocol = protocol
            waits = []
            for channel in list(self.channels):
                confirmed = loop.create_future()
                self._confirmations.setdefault(channel, []).append(confirmed)
                waits.append(confirmed)
            if waits:
                protocol.write(_command("SUBSCRIBE", *self.channels))
                async with asyncio.timeout(self._timeout):
                    await asyncio.gather(*waits)
        except BaseException:
            self._protocol = None
            if protocol.transport is not None:
                protocol.transport.abort()
            self._fail_waiters()
            raise
        self.connected = True
        self.down_since = None
        return protocol

    async def _request(self, protocol: _PubSubProtocol, command: bytes) -> Any:
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies.append(reply)
        protocol.write(command)
        async with asyncio.timeout(self._timeout):
            return await reply

    async def _watch(self, protocol: _PubSubProtocol) -> None:
        """Return when the connection is lost or stops answering pings."""
        while not protocol.lost.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(protocol.lost), self._keepalive)
                return
            pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pongs.append(pong)
            protocol.write(_command("PING"))
            try:
                async with asyncio.timeout(self._timeout):
                    await asyncio.wait([pong, protocol.lost], return_when="FIRST_COMPLETED")
            except TimeoutError:
                log.warning("Redis did not answer a ping in %.1f s; reconnecting", self._timeout)
                return

    def _dispatch(self, value: Any) -> None:
        if isinstance(value, list) and value:
            kind = value[0]
            if kind == b"message":
                self._on_message(value[1].decode(), value[2])
                return
            if kind == b"subscribe":
                for waiter in self._confirmations.pop(value[1].decode(), []):
                    if not waiter.done():
                        waiter.set_result(None)
                return
            if kind == b"pong":
                self._resolve_pong()
                return
            if kind == b"unsubscribe":
                return
        if value == b"PONG":
            self._resolve_pong()
            return
        if self._replies:
            reply = self._replies.pop(0)
            if not reply.done():
                reply.set_result(value)
        elif isinstance(value, _ReplyError):
            log.error("Redis error on the subscription connection: %s", value)

    def _resolve_pong(self) -> None:
        while self._pongs:
            pong = self._pongs.pop(0)
            if not pong.done():
                pong.set_result(None)

    def _fail_waiters(self) -> None:
        for waiters in self._confirmations.values():
            for waiter in waiters:
                waiter.cancel()
        self._confirmations.clear()
        for future in (*self._replies, *self._pongs):
            future.cancel()
        self._replies.clear()
        self._pongs.clear()
