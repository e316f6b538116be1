"""A real HTTP merchant for delivery tests: records every request and answers from a script.

Each path has its own queue of scripted answers (status, headers, or a hang); when a path's
script runs out it answers 200, or, with ``failure_ratio``, a seeded share of transient 500/503
(optionally after a seeded ``latency``). Requests are verified on arrival with the public
``standardwebhooks`` package against the secrets the test registered, as a merchant would.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict, deque
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
    # The status the stub answered (the sender may have died before reading it).
    status: int = 200


TRANSIENT = (500, 503)


class StubMerchant:
    """See the module docstring. ``secrets[path]`` lists the secrets receivers verify with.

    Unscripted answers fail with probability ``failure_ratio`` (a 500 or a 503 without
    ``Retry-After``) and wait up to ``latency`` seconds first. Both draws are a function of
    ``seed``, the path, the ``webhook-id`` and how many times that id reached that path before,
    so a run's answers do not depend on the order in which requests arrive. ``in_flight``
    counts requests being answered right now.
    """

    def __init__(self, *, failure_ratio: float = 0.0, latency: float = 0.0, seed: int = 0) -> None:
        self.received: list[Received] = []
        self.scripts: dict[str, deque[Answer]] = defaultdict(deque)
        self.secrets: dict[str, list[str]] = {}
        self.url = ""
        self.in_flight = 0
        self.failure_ratio = failure_ratio
        self.latency = latency
        self.seed = seed
        self._seen: Counter[tuple[str, str]] = Counter()
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
        webhook_id = headers.get("webhook-id", "")
        answer, delay = self._answer(path, webhook_id)
        self.received.append(
            Received(
                path=path,
                webhook_id=webhook_id,
                timestamp=headers.get("webhook-timestamp", ""),
                signature=headers.get("webhook-signature", ""),
                body=body,
                at=time.monotonic(),
                verified_with=tuple(verified),
                status=answer.status,
            )
        )
        self.in_flight += 1
        try:
            if delay:
                await asyncio.sleep(delay)
            if answer.hang:
                await self._hanging.wait()
        finally:
            self.in_flight -= 1
        return Response(answer.body, status_code=answer.status, headers=answer.headers)

    def _answer(self, path: str, webhook_id: str) -> tuple[Answer, float]:
        """The scripted answer if any, else a seeded draw (see the class docstring)."""
        if self.scripts[path]:
            return self.scripts[path].popleft(), 0.0
        nth = self._seen[path, webhook_id]
        self._seen[path, webhook_id] += 1
        if not (self.failure_ratio or self.latency):
            return Answer(), 0.0
        draw = random.Random(f"{self.seed}|{path}|{webhook_id}|{nth}")
        delay = draw.uniform(0, self.latency)
        if draw.random() < self.failure_ratio:
            return Answer(status=draw.choice(TRANSIENT), body=b"try again"), delay
        return Answer(), delay

    @asynccontextmanager
    async def running(self) -> AsyncIterator[StubMerchant]:
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])
        async with serving(app, what="the stub merchant") as url:
            self.url = url
            try:
                yield self
            finally:
                self._hanging.set()
