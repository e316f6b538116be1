"""HTTP load over keep-alive connections: two interchangeable clients and the per-run result.

* :class:`RawClient` — asyncio streams, a fixed pool of HTTP/1.1 keep-alive connections, one
  request in flight per connection; writes the pre-built request bytes and parses only the status
  line and ``content-length``. The suite sends with it.
* :class:`HttpxClient` — ``httpx.AsyncClient`` with a connection pool of the same size. The suite
  runs it against the bare app next to the raw client, to show whether httpx would cap the load.

:func:`open_loop` and :func:`closed_loop` send pre-signed webhooks with the schedules of
:mod:`benchmarks.pacing` and summarize what came back as a :class:`LoadResult`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

import httpx

from benchmarks import pacing
from benchmarks.pacing import Paced
from benchmarks.stats import Latency
from benchmarks.workload import SignedWebhook

__all__ = ["Client", "HttpxClient", "LoadResult", "RawClient", "closed_loop", "open_loop"]

REQUEST_TIMEOUT = 10.0
TRANSPORT_ERROR = 0
WARM_UP_PATH = "/warm-up"
"""Any path: a 404 answer keeps the connection alive just as well."""


class Client(Protocol):
    """Sends one pre-signed webhook and returns the HTTP status (0 for a transport error)."""

    async def open(self) -> Client:
        """Open every keep-alive connection before the measured window."""
        ...

    async def send(self, request: SignedWebhook) -> int: ...

    async def aclose(self) -> None: ...


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, wire: bytes) -> int:
        self.writer.write(wire)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = _content_length(head)
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def _content_length(head: bytes) -> int:
    marker = b"\r\ncontent-length:"
    start = head.lower().find(marker)
    if start < 0:
        raise ValueError("response without content-length")
    end = head.index(b"\r\n", start + len(marker))
    return int(head[start + len(marker) : end])


class RawClient:
    """A pool of raw HTTP/1.1 keep-alive connections (see the module docstring)."""

    def __init__(self, host: str, port: int, connections: int) -> None:
        self.host = host
        self.port = port
        self.size = connections
        self._idle: asyncio.Queue[_Connection | None] = asyncio.Queue()

    async def open(self) -> RawClient:
        for _ in range(self.size):
            self._idle.put_nowait(await self._connect())
        return self

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return _Connection(reader, writer)

    async def send(self, request: SignedWebhook) -> int:
        return await self.send_wire(request.wire)

    async def send_wire(self, wire: bytes) -> int:
        """Send one complete HTTP/1.1 request; its status (0 for a transport error)."""
        conn = await self._idle.get()
        healthy = False
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                conn = conn or await self._connect()
                status = await conn.exchange(wire)
            healthy = True
            return status
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
            return TRANSPORT_ERROR
        finally:
            # A connection that failed or was interrupted mid-exchange is replaced lazily.
            if not healthy and conn is not None:
                conn.close()
            self._idle.put_nowait(conn if healthy else None)

    async def aclose(self) -> None:
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            if conn is not None:
                conn.close()


class HttpxClient:
    """``httpx.AsyncClient`` with a keep-alive pool of ``connections``."""

    def __init__(self, base_url: str, connections: int) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = httpx.AsyncClient(base_url=base_url, limits=limits, timeout=REQUEST_TIMEOUT)
        self.size = connections

    async def open(self) -> HttpxClient:
        # httpx connects lazily: as many concurrent requests as connections open them all.
        await asyncio.gather(*(self._client.get(WARM_UP_PATH) for _ in range(self.size)))
        return self

    async def send(self, request: SignedWebhook) -> int:
        try:
            response = await self._client.post(
                request.path, content=request.body, headers=request.headers
            )
        except httpx.HTTPError:
            return TRANSPORT_ERROR
        return response.status_code

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass(frozen=True)
class LoadResult:
    """What one load run got back."""

    sent: int
    statuses: Counter[int]
    """Answers by HTTP status (0: transport error); unanswered requests are not in here."""
    latencies: list[float]
    """Seconds per request that got an HTTP answer, plus lower bounds for unanswered ones."""
    unanswered: int
    """Requests without an answer when the run's time was up (censored latencies)."""
    elapsed: float
    first_send_wall: float

    @classmethod
    def of(cls, paced: Paced[int]) -> LoadResult:
        statuses = Counter(paced.finished)
        latencies = [
            o.latency for o in paced.outcomes if not o.finished or o.value != TRANSPORT_ERROR
        ]
        return cls(
            sent=len(paced.outcomes),
            statuses=statuses,
            latencies=latencies,
            unanswered=paced.censored,
            elapsed=paced.elapsed,
            first_send_wall=paced.first_call_wall,
        )

    @property
    def accepted(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def failed(self) -> int:
        """Requests not accepted: error statuses, transport errors and unanswered requests."""
        return self.sent - self.accepted

    @property
    def throughput(self) -> float:
        """Accepted webhooks per second."""
        return self.accepted / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def latency(self) -> Latency:
        return Latency.of(self.latencies)

    @property
    def latency_is_lower_bound(self) -> bool:
        """Unanswered requests count with their wait so far, so percentiles are lower bounds."""
        return self.unanswered > 0


async def open_loop(
    client: Client, requests: list[SignedWebhook], rate: float, *, grace: float
) -> LoadResult:
    """Send ``requests`` at ``rate``/s on schedule; latency counts from each due time."""
    return LoadResult.of(await pacing.open_loop(requests, rate, client.send, grace=grace))


async def closed_loop(
    client: Client,
    requests: list[SignedWebhook],
    concurrency: int,
    duration: float,
    *,
    grace: float,
) -> LoadResult:
    """``concurrency`` senders back to back for ``duration`` s (or until requests run out)."""
    return LoadResult.of(
        await pacing.closed_loop(requests, concurrency, duration, client.send, grace=grace)
    )
