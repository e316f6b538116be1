"""A real HTTP merchant for delivery tests: records every request and answers from a script.

Each path has its own queue of scripted answers (status, headers, or a hang); when a path's
script runs out it answers 200. Requests are verified on arrival with the public
``standardwebhooks`` package against the secrets the test registered, as a merchant would.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support import serving


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    body: bytes = b"ok"


@dataclass(frozen=True)
class Received:
    path: str
    webhook_id: str
    timestamp: str
    signature: str
    body: bytes
    at: float
    verified_with: tuple[str, ...]


class StubMerchant:
    """See the module docstring. ``secrets[path]`` lists the secrets receivers verify with."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.scripts: dict[str, deque[Answer]] = defaultdict(deque)
        self.secrets: dict[str, list[str]] = {}
        self.url = ""
        self._hanging = asyncio.Event()

    def script(self, path: str, *answers: Answer) -> None:
        self.scripts[path].extend(answers)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        headers = {k: v for k, v in request.headers.items() if k.startswith("webhook-")}
        verified = []
        for secret in self.secrets.get(path, []):
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            verified.append(secret)
        self.received.append(
            Received(
                path=path,
                webhook_id=headers.get("webhook-id", ""),
                timestamp=headers.get("webhook-timestamp", ""),
                signature=headers.get("webhook-signature", ""),
                body=body,
                at=time.monotonic(),
                verified_with=tuple(verified),
            )
        )
        answer = self.scripts[path].popleft() if self.scripts[path] else Answer()
        if answer.hang:
            await self._hanging.wait()
        return Response(answer.body, status_code=answer.status, headers=answer.headers)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[StubMerchant]:
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])
        async with serving(app, what="the stub merchant") as url:
            self.url = url
            try:
                yield self
            finally:
                self._hanging.set()
