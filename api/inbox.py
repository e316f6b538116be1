"""The durable inbox writer: records accepted webhooks in Postgres with group commit.

Concurrent requests are gathered while the previous write is in flight and written together in
one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING`` statement, which also NOTIFYs
the relay. A request is answered only after that statement committed, so a 2xx always means the
webhook is in Postgres. No timer is involved: an idle inbox writes a lone webhook immediately.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from core.contracts import INBOX_CHANNEL
from core.errors import MalformedEnvelope, Unavailable, WebhookIdConflict

__all__ = ["Inbox", "InboxEntry", "Recorded", "new_event_id"]

log = logging.getLogger("switchboard.inbox")
# A write stuck longer than this (lock wait, half-open or hung server) answers 503, not a hang.
WRITE_TIMEOUT = 5.0

_INSERT = f"""
WITH incoming AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[],
                         $6::text[], $7::text[], $8::int2[], $9::text[], $10::timestamptz[])
        WITH ORDINALITY AS t(event_id, partner_id, webhook_id, body_sha256, event_type,
                             entity_key, merchant_id, priority, payload, received_at, n)
), inserted AS (
    INSERT INTO webhooks (event_id, partner_id, webhook_id, body_sha256, event_type, entity_key,
                          merchant_id, priority, payload, received_at)
    SELECT event_id, partner_id, webhook_id, body_sha256, event_type, entity_key, merchant_id,
           priority, payload::jsonb, received_at
    FROM incoming ORDER BY n
    ON CONFLICT (partner_id, webhook_id) DO NOTHING
    RETURNING event_id
)
SELECT event_id, pg_notify('{INBOX_CHANNEL}', '') FROM inserted
"""

_EXISTING = """
SELECT partner_id, webhook_id, event_id, body_sha256 FROM webhooks
WHERE (partner_id, webhook_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
"""


def new_event_id() -> str:
    """A time-ordered, unguessable event id such as ``evt_0193a1b2c3d4e5f6a7b8c9d0e1f2``."""
    return f"evt_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


@dataclass(frozen=True)
class InboxEntry:
    """One verified webhook, ready to be recorded."""

    event_id: str
    partner_id: str
    webhook_id: str
    body: bytes
    event_type: str
    entity_key: str | None
    merchant_id: str | None
    priority: int
    payload_json: str
    received_at: datetime

    @property
    def body_sha256(self) -> bytes:
        return hashlib.sha256(self.body).digest()


@dataclass(frozen=True)
class Recorded:
    """Where a webhook stands after recording: its event id, and whether it was a repeat."""

    event_id: str
    duplicate: bool


class Inbox:
    """Group-committing writer of the ``webhooks`` table; see the module docstring."""

    def __init__(
        self, pool: asyncpg.Pool, *, batch_max: int = 500, timeout: float = WRITE_TIMEOUT
    ) -> None:
        self._pool = pool
        self._batch_max = batch_max
        self._timeout = timeout
        self._pending: list[tuple[InboxEntry, asyncio.Future[Recorded]]] = []
        self._has_pending = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    async def record(self, entry: InboxEntry) -> Recorded:
        """Durably record ``entry``; a repeat of a recorded webhook returns its original id.

        Raises :class:`WebhookIdConflict` if the same webhook id came with another body, and
        :class:`Unavailable` if Postgres cannot take the write right now, or has not within
        the write timeout (the webhook may then still be recorded: the partner's retry of it
        is answered as a repeat).
        """
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_forever(), name="inbox-writer")
        future: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        pair = (entry, future)
        self._pending.append(pair)
        self._has_pending.set()
        try:
            # Each request has its own deadline: behind a stuck batch it would wait for two.
            async with asyncio.timeout(self._timeout):
                return await future
        except TimeoutError:
            if pair in self._pending:
                self._pending.remove(pair)
            raise Unavailable("the inbox did not answer in time", retry_after=5) from None

    async def close(self) -> None:
        """Stop the writer task (pending requests fail with :class:`Unavailable`)."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        for _, future in self._pending:
            if not future.done():
                future.set_exception(Unavailable("shutting down", retry_after=1))

    async def _write_forever(self) -> None:
        while True:
            await self._has_pending.wait()
            batch = self._pending[: self._batch_max]
            del self._pending[: self._batch_max]
            if not self._pending:
                self._has_pending.clear()
            try:
                async with asyncio.timeout(self._timeout):
                    results = await self._write(batch)
            except asyncpg.DataError as error:
                # One unstorable row must not fail the webhooks written alongside it.
                log.warning("inbox batch refused, writing its rows one by one: %r", error)
                results = [await self._write_alone(pair) for pair in batch]
            except Exception as error:
                # Whatever went wrong, every waiting request must get an answer, never a hang.
                log.warning("inbox write failed: %r", error)
                results = [Unavailable("the inbox is unavailable", retry_after=5) for _ in batch]
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _write_alone(
        self, pair: tuple[InboxEntry, asyncio.Future[Recorded]]
    ) -> Recorded | Exception:
        try:
            async with asyncio.timeout(self._timeout):
                return (await self._write([pair]))[0]
        except asyncpg.DataError as error:
            return MalformedEnvelope(f"the webhook cannot be stored: {error}")
        except Exception:
            return Unavailable("the inbox is unavailable", retry_after=5)

    async def _write(
        self, batch: list[tuple[InboxEntry, asyncio.Future[Recorded]]]
    ) -> list[Recorded | Exception]:
        entries = [entry for entry, _ in batch]
        inserted = {
            row["event_id"]
            for row in await self._pool.fetch(
                _INSERT,
                [e.event_id for e in entries],
                [e.partner_id for e in entries],
                [e.webhook_id for e in entries],
                [e.body_sha256 for e in entries],
                [e.event_type for e in entries],
                [e.entity_key for e in entries],
                [e.merchant_id for e in entries],
                [e.priority for e in entries],
                [e.payload_json for e in entries],
                [e.received_at for e in entries],
                timeout=self._timeout,
            )
        }
        repeats = [e for e in entries if e.event_id not in inserted]
        existing: dict[tuple[str, str], asyncpg.Record] = {}
        if repeats:
            rows = await self._pool.fetch(
                _EXISTING,
                [e.partner_id for e in repeats],
                [e.webhook_id for e in repeats],
                timeout=self._timeout,
            )
            existing = {(row["partner_id"], row["webhook_id"]): row for row in rows}
        return [self._outcome(entry, inserted, existing) for entry in entries]

    @staticmethod
    def _outcome(
        entry: InboxEntry,
        inserted: set[str],
        existing: dict[tuple[str, str], asyncpg.Record],
    ) -> Recorded | Exception:
        if entry.event_id in inserted:
            return Recorded(entry.event_id, duplicate=False)
        original = existing.get((entry.partner_id, entry.webhook_id))
        if original is None:
            return Unavailable("the webhook could not be recorded", retry_after=1)
        if bytes(original["body_sha256"]) != entry.body_sha256:
            return WebhookIdConflict(
                f"webhook-id {entry.webhook_id!r} was already received with a different body"
            )
        return Recorded(original["event_id"], duplicate=True)
