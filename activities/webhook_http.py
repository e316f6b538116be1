"""One outbound webhook on the wire: its Standard Webhooks body, the signed POST through the
worker's vetted HTTP pool (:mod:`core.egress`), and what happened (:class:`Sent`).

Expected failures (a refused destination, network errors, timeouts, any HTTP answer) come back
as a :class:`Sent`; only a pool with no free connection raises (:class:`WorkerBusy`), because
that is the worker's state, not the endpoint's. Bodies are read up to ``RESPONSE_READ_CAP``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpcore

from core.errors import DestinationRefused
from core.signing import sign_headers

__all__ = [
    "RESPONSE_HEAD_BYTES",
    "Sent",
    "WorkerBusy",
    "ms_since",
    "post_webhook",
    "webhook_body",
]

USER_AGENT = b"Switchboard-Webhooks/0.1"
# Enough of a response body to show an operator what the receiver said.
RESPONSE_HEAD_BYTES = 1024
RESPONSE_READ_CAP = 64 * 1024
# A receiver cannot push a retry further out than the longest step of the schedule.
MAX_RETRY_AFTER_SECONDS = 36000.0
# How long an attempt waits for a free connection of the worker's pool before backing off.
POOL_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class Sent:
    """What happened on the wire during one attempt (a webhook, or an email: 200 if taken)."""

    started_at: datetime
    latency_ms: float
    status_code: int | None = None
    error: str | None = None
    response: bytes = b""
    retry_after_seconds: float | None = None
    permanent: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300 and not self.error


class WorkerBusy(Exception):
    """Every connection of this worker's HTTP pool is taken: not the endpoint's fault."""


def webhook_body(
    event_type: str, occurred_at: datetime, data: dict[str, Any], **extra: Any
) -> bytes:
    """The Standard Webhooks payload ``{type, timestamp, data}``; identical on every attempt."""
    payload = {"type": event_type, "timestamp": occurred_at.isoformat(), "data": {**data, **extra}}
    return json.dumps(payload, separators=(",", ":")).encode()


async def post_webhook(
    http: httpcore.AsyncConnectionPool,
    url: str,
    body: bytes,
    *,
    webhook_id: str,
    secrets: list[str],
    timeout: float,
) -> Sent:
    """POST ``body`` to ``url`` signed with every secret in ``secrets``, within ``timeout`` s.

    Raises :class:`WorkerBusy` if no pooled connection frees up within ``POOL_WAIT_SECONDS``.
    """
    headers = [
        (name.encode(), value.encode())
        for name, value in sign_headers(secrets, webhook_id, body, now=int(time.time())).items()
    ]
    headers += [
        (b"content-type", b"application/json"),
        (b"user-agent", USER_AGENT),
    ]
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            async with http.stream(
                "POST",
                url,
                headers=headers,
                content=body,
                extensions={"timeout": {"pool": POOL_WAIT_SECONDS}},
            ) as r:
                response = await _read_capped(r)
    except httpcore.PoolTimeout as error:
        raise WorkerBusy from error
    except DestinationRefused as error:
        return Sent(started_at, ms_since(clock), error=str(error))
    except TimeoutError:
        return Sent(started_at, ms_since(clock), error=f"timed out after {timeout:g}s")
    except (
        httpcore.ProtocolError,
        httpcore.NetworkError,
        httpcore.TimeoutException,
        httpcore.UnsupportedProtocol,
    ) as e:
        return Sent(started_at, ms_since(clock), error=f"{type(e).__name__}: {e}")
    return Sent(
        started_at,
        ms_since(clock),
        status_code=r.status,
        response=response,
        retry_after_seconds=_retry_after(r) if r.status in (429, 503) else None,
    )


def ms_since(clock: float) -> float:
    """Milliseconds since ``clock`` (a ``time.perf_counter()`` reading)."""
    return (time.perf_counter() - clock) * 1000


async def _read_capped(response: httpcore.Response) -> bytes:
    """Read at most ``RESPONSE_READ_CAP`` bytes of a response body, then stop reading."""
    head = bytearray()
    async for chunk in response.aiter_stream():
        head += chunk
        if len(head) >= RESPONSE_READ_CAP:
            break
    return bytes(head[:RESPONSE_READ_CAP])


def _retry_after(response: httpcore.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), if it has a valid one."""
    for name, value in response.headers:
        if name.lower() != b"retry-after":
            continue
        text = value.decode("latin-1").strip()
        if text.isascii() and text.isdigit():
            return min(float(text), MAX_RETRY_AFTER_SECONDS)
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
        return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)
    return None
