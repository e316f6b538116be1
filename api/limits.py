"""What a client may send the api, how fast, and on how many connections.

* **Connections and request heads** (:class:`GuardedHttpToolsProtocol`, uvicorn's httptools
  protocol with three checks): at most ``api_max_connections`` open at once (a further one is
  answered 503 and closed at once); a request line and headers must be complete within
  ``header_timeout_seconds`` of the connection opening, or of the first byte of the next request
  on a kept-alive one (408, then close), and hold at most ``max_header_bytes`` (431, then close).
  A request answered before its body was read (any refusal) has the rest of its body read and
  dropped for ``LINGER_SECONDS`` (reading stops after ``LINGER_BYTES``), so the client reads
  the answer rather than a connection reset; then the connection is closed.
* **Bodies** (:class:`RequestLimits`, an ASGI middleware in front of every route): capped while
  they stream (``max_body_bytes`` on the ingress, ``operator_max_body_bytes`` everywhere else;
  413 at once when ``Content-Length`` already says so) and given ``body_timeout_seconds`` from
  the end of the headers to arrive (408). ``/v1`` requests without an
  ``Authorization: Bearer`` credential are refused (401) before anything is read, and the API
  key of one with a body is checked (:func:`api.auth.authenticate`) before its body is read.
  A client that leaves mid-body is logged in one line, at info.

Every refusal is an RFC 9457 problem. ``api.app.server_options`` puts the protocol in uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from api.auth import authenticate
from api.problems import problem
from core.db import DATABASE_UNREACHABLE
from core.errors import BodyTimeout, IngressError, PayloadTooLarge
from core.settings import Settings

__all__ = ["GuardedHttpToolsProtocol", "RequestLimits"]

log = logging.getLogger("switchboard.limits")

INGRESS_PREFIX = "/webhooks/"
OPERATOR_PREFIX = "/v1/"
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024


# -- connections and request heads -----------------------------------------------------------


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that bounds connections, and the time and size of heads.

    httptools itself has neither a head timeout nor a head size limit: it buffers a header of
    any length, and uvicorn's only timer is keep-alive, which every received byte cancels.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        header_timeout: float,
        max_header_bytes: int,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timeout = header_timeout
        self._max_header_bytes = max_header_bytes
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True
        self._head_bytes = 0
        self._refused = False
        self._linger_timer: asyncio.TimerHandle | None = None
        self._lingered = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limit = self.limit_concurrency
        if limit is not None and len(self.connections) > limit:
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "too many open connections; retry later")
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            if self._head_timer is None:
                self._arm_head_timer()
            self._head_bytes += len(data)
        super().data_received(data)
        # Counted per read, so a head still incomplete this far over the limit is refused here;
        # one that arrived whole in a single read is measured exactly in on_headers_complete.
        if (
            self._in_head
            and self._head_bytes > self._max_header_bytes
            and not self.transport.is_closing()
        ):
            self._refuse_large_head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        if self._head_bytes > self._max_header_bytes and self._head_size() > self._max_header_bytes:
            self._refuse_large_head()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._linger_timer is not None:
            self._lingered += len(body)
            if self._lingered > LINGER_BYTES:
                # Stop reading rather than close: closing with unread bytes resets the
                # connection, and the client may not have read the answer yet.
                self.flow.pause_reading()
        elif not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        if self._linger_timer is not None:
            # Drained; still closed: the client may not have waited for the answer before
            # sending more, so where its next request starts is not worth trusting.
            self._stop_lingering()
            return
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._in_head and not self.transport.is_closing():
            # Answered before the body was read: drop the rest for a bounded while, then close.
            self._linger_timer = self.loop.call_later(LINGER_SECONDS, self._stop_lingering)

    def _stop_lingering(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self._refused = True
        self.transport.close()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self._header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            log.info(
                "closed a connection from %s: no complete request head within %gs",
                _peer(self.client),
                self._header_timeout,
            )
            self._refuse(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the request head did not arrive within {self._header_timeout:g}s",
            )

    def _refuse_large_head(self) -> None:
        log.info(
            "closed a connection from %s: request head over %d bytes",
            _peer(self.client),
            self._max_header_bytes,
        )
        self._refuse(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            f"the request line and headers exceed {self._max_header_bytes} bytes",
        )

    def _refuse(self, status: HTTPStatus, detail: str) -> None:
        """Answer with a problem and close, unless a response is under way (then just close)."""
        self._refused = True
        self._disarm_head_timer()
        if self.cycle is None or self.cycle.response_complete:
            body = json.dumps(
                {"type": "about:blank", "title": status.phrase, "status": status, "detail": detail}
            ).encode()
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/problem+json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, status.phrase.encode(), len(body), body)
            )
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown"


# -- bodies ----------------------------------------------------------------------------------


class RequestLimits:
    """ASGI middleware: body caps and timeouts for every route, and no key, no body on ``/v1``."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.ingress_max_body_bytes = settings.max_body_bytes
        self.max_body_bytes = settings.operator_max_body_bytes
        self.body_timeout = settings.body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        ingress = path.startswith(INGRESS_PREFIX)
        await _Exchange(
            self.app,
            scope,
            receive,
            send,
            max_body_bytes=self.ingress_max_body_bytes if ingress else self.max_body_bytes,
            body_timeout=self.body_timeout,
            needs_bearer=path.startswith(OPERATOR_PREFIX),
        ).run()


class _BodyRefused(Exception):
    """Raised from ``receive`` when the body breaks a limit; the exchange answers for it."""


class _Exchange:
    """One request through :class:`RequestLimits`."""

    def __init__(
        self,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        max_body_bytes: int,
        body_timeout: float,
        needs_bearer: bool,
    ) -> None:
        self.app = app
        self.scope = scope
        self._receive = receive
        self._send = send
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.needs_bearer = needs_bearer
        self.declared: int | None = None
        self.has_body = False
        self.bearer: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                self.declared = int(value) if value.isdigit() else None
                self.has_body = self.has_body or value != b"0"
            elif name == b"transfer-encoding":
                self.has_body = True
            elif name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer" and credentials.strip():
                    self.bearer = credentials.strip().decode("latin-1")
        self.body_done = not self.has_body
        self.received = 0
        self.deadline = asyncio.get_running_loop().time() + body_timeout
        self.refusal: IngressError | None = None
        self.response_started = False
        self.client_left = False

    async def run(self) -> None:
        if self.needs_bearer and not self.bearer:
            detail = "send an operator API key as 'Authorization: Bearer <key>'"
            await self._answer(problem(401, "Unauthorized", detail))
            return
        if self.needs_bearer and self.has_body and not await self._authenticated():
            return
        if self.declared is not None and self.declared > self.max_body_bytes:
            self.refusal = self._too_large()
            await self._answer_refusal()
            return
        try:
            await self.app(self.scope, self.receive, self.send)
        except ClientDisconnect:
            return  # logged where it was noticed, in receive
        except (_BodyRefused, IngressError):
            if self.refusal is None:
                raise
        if self.refusal is not None and not self.response_started:
            await self._answer_refusal()

    async def _authenticated(self) -> bool:
        """Check the API key of a request with a body before reading it; answers if it fails.

        (Requests without a body, which may carry a dashboard token instead, are checked by the
        route.) The operator is kept for :func:`api.auth.require`, so the key is looked up once.
        """
        assert self.bearer is not None
        try:
            operator = await authenticate(self.scope["app"].state, self.bearer)
        except DATABASE_UNREACHABLE:
            await self._answer(
                problem(
                    503,
                    "Service Unavailable",
                    "API keys cannot be checked right now; retry later",
                    headers={"Retry-After": "5"},
                )
            )
            return False
        if operator is None:
            await self._answer(problem(401, "Unauthorized", "unknown or revoked API key"))
            return False
        self.scope.setdefault("state", {})["operator"] = operator
        return True

    async def receive(self) -> Message:
        if self.body_done:
            # After the body, receive only waits for a disconnect: no deadline on that.
            return await self._receive()
        if self.refusal is not None:
            raise _BodyRefused
        try:
            async with asyncio.timeout_at(self.deadline):
                message = await self._receive()
        except TimeoutError:
            self.refusal = BodyTimeout(
                f"the body did not arrive within {self.body_timeout:g}s of the headers"
            )
            log.info(
                "%s %s from %s: body too slow (%d bytes in %gs)",
                self.scope["method"],
                self.scope["path"],
                _peer(self.scope.get("client")),
                self.received,
                self.body_timeout,
            )
            raise self._raised() from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_body_bytes:
                self.refusal = self._too_large()
                raise self._raised()
            self.body_done = not message.get("more_body", False)
        elif message["type"] == "http.disconnect" and not self.client_left:
            self.client_left = True
            log.info(
                "%s %s from %s: client went away after %d bytes of its body",
                self.scope["method"],
                self.scope["path"],
                _peer(self.scope.get("client")),
                self.received,
            )
        return message

    async def send(self, message: Message) -> None:
        if self.refusal is not None:
            # Whatever the app makes of the refused body (FastAPI calls it a 400), the answer
            # is the refusal.
            if not self.response_started:
                await self._answer_refusal()
            return
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the body is larger than {self.max_body_bytes} bytes")

    def _raised(self) -> Exception:
        # The ingress counts refusals by their IngressError; FastAPI turns anything but an
        # HTTPException met while reading a body into a 400, which send() replaces anyway.
        assert self.refusal is not None
        return self.refusal

    async def _answer_refusal(self) -> None:
        error = self.refusal
        assert error is not None
        await self._answer(
            problem(error.status, error.title, error.detail, type_=error.problem_type)
        )

    async def _answer(self, response: Any) -> None:
        self.response_started = True
        await response(self.scope, self._receive, self._send)
