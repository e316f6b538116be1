"""The gateway process: a ``websockets`` server with sessions, health, metrics and shutdown.

Handshake (``process_request``): ``/healthz`` and ``/metrics`` are plain HTTP; the WebSocket lives
at ``/ws``. Before the 101, the Origin must be on the allow-list (403), the source and the
instance must be under their handshake rates (429 with ``Retry-After``) and the instance under
its connection cap (503). A client may authenticate in the handshake with
``Authorization: Bearer <token>`` (refused with 401 if invalid) and
``Switchboard-Since-Seq: <n>``; browsers, which cannot set headers, send the token as the first
message instead (:mod:`gateway.protocol`). Tokens never travel in the URL: a ``/ws`` URL with a
query string is refused.

Compression is off (no permessage-deflate: no compression bombs, no CRIME-style leaks), client
messages are capped at ``gateway_max_message_bytes`` (1009 above), and keepalive pings close
dead peers after ``gateway_ping_interval_seconds + gateway_ping_timeout_seconds``. The HTTP side
(every handshake, ``/healthz`` and ``/metrics`` included) must be complete within
``gateway_open_timeout_seconds`` of connecting, with request lines and headers of at most 8 KiB
each and 128 headers (``websockets``' limits) and no body; otherwise the connection is closed.
``/healthz`` answers 503 while Redis is unreachable.

On SIGTERM every connection is closed with 1012 so clients reconnect, with backoff and jitter,
to another instance and resume from their last seq.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import os
import signal
import socket
import time

import asyncpg
import uvloop
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from core.alerting import Severity, alert_kind
from core.audit import raise_alert, resolve_alert
from core.dashboard_tokens import DashboardGrant, verify_dashboard_token
from core.db import DATABASE_UNREACHABLE, connect_pool
from core.errors import InvalidDashboardToken
from core.feeds import TopicKind
from core.logs import configure_logging
from core.settings import Settings
from gateway.admission import Admission, TokenBucket
from gateway.hub import (
    Hub,
    ReplayTooLong,
    ResumeFailed,
    TopicFull,
    close_or_abort,
)
from gateway.metrics import CONNECTIONS, DISCONNECTS, HANDSHAKES_REFUSED, REDIS_CONNECTED, RESUMES
from gateway.protocol import CloseCode, control_message, parse_client_message
from gateway.redis_feed import RedisSubscriber

__all__ = [
    "CLIENT_MESSAGE_BURST_SECONDS",
    "REDIS_ALERT_KEY",
    "WEBSOCKET_PATH",
    "Gateway",
    "main",
    "run_gateway",
]

log = logging.getLogger(__name__)

WEBSOCKET_PATH = "/ws"
REDIS_ALERT_KEY = "gateway:redis-unreachable"
REDIS_UNREACHABLE = alert_kind(
    "gateway_redis_unreachable",
    Severity.ERROR,
    "A gateway cannot reach Redis: dashboards are fed from Postgres, slower, until it is back.",
)
SHUTDOWN_SECONDS = 5.0
"""How long clients get to acknowledge the 1012 close before their sockets are reset."""
CLOSE_TIMEOUT_SECONDS = 2.0
"""How long a closing handshake may take; a dead peer is gone after ping interval + ping
timeout + this (42 s with the defaults)."""
SINCE_SEQ_HEADER = "Switchboard-Since-Seq"
CLIENT_MESSAGE_BURST_SECONDS = 10
"""A client may send this many seconds' worth of its per-minute allowance at once."""


class Gateway:
    """One gateway instance: ``await start()``, serve, ``await stop()`` (closes with 1012)."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self._pool = pool
        self.hub = Hub(
            pool,
            client_buffer_bytes=settings.gateway_client_buffer_bytes,
            gap_grace_seconds=settings.gateway_gap_grace_seconds,
            max_connections_per_topic=settings.gateway_max_connections_per_merchant,
            max_gap_seconds=settings.gateway_max_gap_seconds,
            max_pending_events=settings.gateway_max_pending_events,
            max_pending_bytes=settings.gateway_max_pending_bytes,
            max_replay_events=settings.gateway_max_replay_events,
        )
        self.subscriber = RedisSubscriber(
            settings.redis_url, self.hub.on_message, on_up=self._redis_up, on_down=self._redis_down
        )
        self.hub.subscriber = self.subscriber
        self.admission = Admission(
            allowed_origins=settings.gateway_allowed_origins,
            allow_missing_origin=settings.gateway_allow_missing_origin,
            rate_per_source=settings.gateway_connect_rate_per_source,
            rate_global=settings.gateway_connect_rate_global,
            max_connections=settings.gateway_max_connections,
        )
        self._secret = settings.dashboard_token_secret.get_secret_value()
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._needs_resync = False
        self._alert_recorded_at: float | None = None
        self.instance = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        """Listen (port 0 picks a free one) and start following Redis."""
        settings = self.settings
        self._server = await serve(
            self._handle,
            host or settings.gateway_host,
            settings.gateway_port if port is None else port,
            process_request=self._process_request,
            compression=None,
            max_size=settings.gateway_max_message_bytes,
            max_queue=4,
            ping_interval=settings.gateway_ping_interval_seconds,
            ping_timeout=settings.gateway_ping_timeout_seconds,
            open_timeout=settings.gateway_open_timeout_seconds,
            close_timeout=CLOSE_TIMEOUT_SECONDS,
            server_header=None,
        )
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{self.port}"
        self._tasks = [
            asyncio.create_task(self.subscriber.run(), name="redis-subscriber"),
            asyncio.create_task(self._watch_redis(), name="redis-watch"),
        ]

    async def stop(self) -> None:
        """Close every connection with 1012, stop following Redis, stop listening."""
        server = self._server
        if server is not None:
            server.close(code=CloseCode.SERVICE_RESTART, reason="service restart")
            DISCONNECTS.labels("shutdown").inc(len(server.connections))
            try:
                async with asyncio.timeout(SHUTDOWN_SECONDS + 1):
                    await server.wait_closed()
            except TimeoutError:
                for connection in list(server.all_connections):
                    connection.transport.abort()
                await server.wait_closed()
        for task in self._tasks:
            task.cancel()
        # Bounded: in Python 3.11 an asyncio.wait_for inside a library can swallow a
        # cancellation, and a task that never ends must not keep the process from exiting.
        _, stuck = await asyncio.wait(self._tasks, timeout=SHUTDOWN_SECONDS)
        for task in stuck:
            log.error("task %s did not stop when cancelled", task.get_name())

    # -- handshake --------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path == "/healthz":
            health = self.health()
            # Degraded (Redis unreachable) is 503, so a balancer takes this instance out.
            status = http.HTTPStatus.OK if health["status"] == "ok" else 503
            return _json_response(connection, status, health)
        if path == "/metrics":
            response = connection.respond(http.HTTPStatus.OK, generate_latest().decode())
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response
        if path != WEBSOCKET_PATH:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Not found.\n")
        if query:
            return self._refuse(
                connection, 400, "query", "No query strings: send the token in a message.\n"
            )
        source = connection.remote_address[0] if connection.remote_address else "unknown"
        refusal = self.admission.check(
            request.headers.get("Origin"),
            source,
            # Not Server.connections: that builds a set of every connection per handshake. This
            # counts those opening or closing too, less the one asking.
            len(self._server.all_connections) - 1 if self._server else 0,
        )
        if refusal is not None:
            return self._refuse(
                connection, refusal.status, refusal.reason, refusal.detail, refusal.retry_after
            )
        try:
            self._header_authentication(request.headers)
        except InvalidDashboardToken as error:
            return self._refuse(connection, 401, "auth", f"{error}\n")
        except ValueError:
            return self._refuse(connection, 400, "auth", f"{SINCE_SEQ_HEADER} must be a seq\n")
        return None

    def _header_authentication(self, headers: Headers) -> tuple[DashboardGrant, int | None] | None:
        """The grant and since_seq of ``Authorization`` in the handshake; None without it.

        Run before the upgrade (to refuse with 401) and again by the session, which keeps
        nothing per connection between the two: a handshake that fails after this check, or a
        peer that leaves, leaves nothing behind. Raises ``InvalidDashboardToken`` or
        ``ValueError`` (a bad ``Switchboard-Since-Seq``).
        """
        authorization = headers.get("Authorization")
        if authorization is None:
            return None  # the token comes as the first message
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise InvalidDashboardToken("use 'Authorization: Bearer <dashboard token>'")
        grant = verify_dashboard_token(self._secret, token.strip(), now=time.time())
        since_header = headers.get(SINCE_SEQ_HEADER)
        since = int(since_header) if since_header is not None else None
        if since is not None and since < 0:
            raise ValueError(since)
        return grant, since

    @staticmethod
    def _refuse(
        connection: ServerConnection,
        status: int,
        reason: str,
        detail: str,
        retry_after: int | None = None,
    ) -> Response:
        HANDSHAKES_REFUSED.labels(reason).inc()
        response = connection.respond(status, detail)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    def health(self) -> dict[str, object]:
        """What ``/healthz`` answers: 200 with ``"status": "ok"``, or 503 while degraded."""
        return {
            "status": "ok" if self.subscriber.connected else "degraded",
            "redis": self.subscriber.connected,
            "connections": self.hub.connection_count(),
            "feeds": len(self.hub.feeds),
            "merchant_feeds": sum(t.kind is TopicKind.MERCHANT for t in self.hub.feeds),
            "instance": self.instance,
        }

    # -- sessions ---------------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        try:
            assert connection.request is not None
            authenticated = self._header_authentication(connection.request.headers)
        except (InvalidDashboardToken, ValueError) as error:
            # Only if the token expired in the instant since process_request accepted it.
            DISCONNECTS.labels("auth").inc()
            await self._close(connection, CloseCode.POLICY_VIOLATION, str(error))
            return
        if authenticated is None:
            authenticated = await self._first_message_auth(connection)
            if authenticated is None:
                return
        grant, since_seq = authenticated
        try:
            feed = await self.hub.join(connection, grant.topic, since_seq)
        except TopicFull:
            DISCONNECTS.labels("cap").inc()
            await self._close(connection, CloseCode.TRY_AGAIN_LATER, "too many connections")
            return
        except ReplayTooLong as error:
            log.info("resume refused for %s: %s", grant.topic.key, error)
            DISCONNECTS.labels("replay").inc()
            await self._close(
                connection, CloseCode.INSUFFICIENT_STATE, "too far behind: reload with sync"
            )
            return
        except ResumeFailed as error:
            log.warning("resume failed for %s: %s", grant.topic.key, error)
            DISCONNECTS.labels("resume").inc()
            await self._close(connection, CloseCode.INSUFFICIENT_STATE, "resume failed")
            return
        except ConnectionClosed:
            return
        CONNECTIONS.inc()
        if since_seq is not None:
            RESUMES.inc()
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, grant.expires_at - time.time()), self._expire, connection
        )
        try:
            await self._read_client_messages(connection)
        finally:
            expiry.cancel()
            self.hub.leave(feed, connection)
            CONNECTIONS.dec()

    async def _first_message_auth(
        self, connection: ServerConnection
    ) -> tuple[DashboardGrant, int | None] | None:
        try:
            async with asyncio.timeout(self.settings.gateway_auth_timeout_seconds):
                raw = await connection.recv()
        except TimeoutError:
            reason = "authentication timeout"
        except ConnectionClosed:
            return None
        else:
            message = parse_client_message(raw)
            if message is None or message.type != "auth" or message.token is None:
                reason = "expected an auth message"
            else:
                try:
                    grant = verify_dashboard_token(self._secret, message.token, now=time.time())
                except InvalidDashboardToken as error:
                    reason = str(error)
                else:
                    return grant, message.since_seq
        DISCONNECTS.labels("auth").inc()
        await self._close(connection, CloseCode.POLICY_VIOLATION, reason)
        return None

    async def _read_client_messages(self, connection: ServerConnection) -> None:
        per_minute = self.settings.gateway_client_messages_per_minute
        allowance = TokenBucket(
            per_minute / 60, max(1.0, per_minute / 60 * CLIENT_MESSAGE_BURST_SECONDS)
        )
        try:
            async for raw in connection:
                message = parse_client_message(raw)
                if message is None or message.type != "ping":
                    DISCONNECTS.labels("protocol").inc()
                    await self._close(connection, CloseCode.POLICY_VIOLATION, "unexpected message")
                    return
                if allowance.take(time.monotonic()) > 0:
                    DISCONNECTS.labels("flood").inc()
                    await self._close(connection, CloseCode.POLICY_VIOLATION, "too many messages")
                    return
                broadcast([connection], control_message("pong"))
        except ConnectionClosed:
            return

    def _expire(self, connection: ServerConnection) -> None:
        DISCONNECTS.labels("expired").inc()
        self.hub.close_soon(connection, CloseCode.TOKEN_EXPIRED, "token expired")

    @staticmethod
    async def _close(connection: ServerConnection, code: int, reason: str) -> None:
        await close_or_abort(connection, code, reason[:120], CLOSE_TIMEOUT_SECONDS)

    # -- Redis outages ----------------------------------------------------------------------

    async def _redis_up(self) -> None:
        REDIS_CONNECTED.set(1)
        await self._resync("Redis reconnected")
        if self._alert_recorded_at is not None:
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    await resolve_alert(conn, REDIS_ALERT_KEY, reason="Redis reachable again")
                self._alert_recorded_at = None
            except DATABASE_UNREACHABLE as error:
                log.warning("cannot resolve the Redis alert yet: %s", error)

    def _redis_down(self) -> None:
        REDIS_CONNECTED.set(0)

    async def _resync(self, why: str) -> None:
        try:
            await self.hub.resync_all()
            self._needs_resync = False
        except DATABASE_UNREACHABLE as error:
            self._needs_resync = True
            log.warning("cannot refill feeds from Postgres (%s): %s", why, error)

    async def _watch_redis(self) -> None:
        """Check every feed against Postgres: often while Redis is down (clients keep getting
        events, and the alert is raised if it lasts), now and then while it is up (a publish
        Redis dropped at the end of a feed has no later event to reveal the gap)."""
        settings = self.settings
        last_check = time.monotonic()
        while True:
            await asyncio.sleep(settings.gateway_outage_poll_seconds)
            down_since = self.subscriber.down_since
            now = time.monotonic()
            position_due = now - last_check >= settings.gateway_position_check_seconds
            if down_since is None and not self._needs_resync and not position_due:
                continue
            last_check = now
            await self._resync("Redis is down" if down_since is not None else "position check")
            if down_since is None:
                continue
            now = time.monotonic()
            due = self._alert_recorded_at is None or (
                now - self._alert_recorded_at >= settings.gateway_redis_alert_after_seconds
            )
            if now - down_since >= settings.gateway_redis_alert_after_seconds and due:
                await self._record_redis_alert(now - down_since)

    async def _record_redis_alert(self, seconds_down: float) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await raise_alert(
                    conn,
                    REDIS_UNREACHABLE,
                    dedup_key=REDIS_ALERT_KEY,
                    summary=f"gateway {self.instance} cannot reach Redis"
                    f" for {seconds_down:.0f} s; dashboards are fed from Postgres meanwhile",
                    details={"instance": self.instance, "seconds_down": round(seconds_down)},
                )
            self._alert_recorded_at = time.monotonic()
            log.error("Redis unreachable for %.0f s; alert raised", seconds_down)
        except DATABASE_UNREACHABLE as error:
            log.error("Redis unreachable and the alert cannot be recorded: %s", error)


def _json_response(connection: ServerConnection, status: int, body: object) -> Response:
    response = connection.respond(status, json.dumps(body) + "\n")
    response.headers["Content-Type"] = "application/json"
    return response


async def run_gateway(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then close every connection with 1012."""
    pool = await connect_pool(settings.database_url, size=settings.database_pool_size)
    gateway = Gateway(settings, pool)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await gateway.start()
        log.info("gateway listening on %s:%s", settings.gateway_host, gateway.port)
        await stop.wait()
        log.info("shutting down: closing connections with 1012")
    finally:
        await gateway.stop()
        await pool.close()


def main() -> None:
    """``switchboard gateway`` / ``python -m gateway``."""
    settings = Settings()
    configure_logging(settings.log_level)
    uvloop.run(run_gateway(settings))
