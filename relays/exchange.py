"""The exchange relay: starts the workflow of every exchange request that does not have one yet.

The api starts a request's workflow right after the create commits (in the background) and
marks it started; this relay, hosted by the worker, starts whatever is still unmarked: requests
created while Temporal was unreachable (the api NOTIFYs when its start fails) or whose api died
between commit and start (the periodic sweep). Starting is idempotent, so the relay and the api
may both start one request without harm. No row lock is held while Temporal answers, so a claim
never waits behind the relay.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from temporalio.client import Client

from core.contracts import EXCHANGE_CHANNEL
from core.exchange_workflow import mark_started, start_workflow
from core.settings import Settings
from relays.loop import NotifiedRelay

__all__ = ["ExchangeRelay"]

BATCH = 200
log = logging.getLogger("switchboard.relay.exchange")


class ExchangeRelay(NotifiedRelay):
    """Starts the missing exchange request workflows; see the module docstring."""

    channel = EXCHANGE_CHANNEL

    def __init__(self, pool: asyncpg.Pool, client: Client, settings: Settings) -> None:
        super().__init__(settings.database_url, settings.relay_sweep_seconds)
        self._pool = pool
        self._client = client
        self._settings = settings
        self._starts = asyncio.Semaphore(settings.relay_start_concurrency)

    async def drain(self) -> int:
        total = 0
        while True:
            rows = await self._pool.fetch(
                "SELECT id, merchant_id FROM exchange_requests WHERE workflow_started_at IS NULL"
                " ORDER BY created_at LIMIT $1",
                BATCH,
            )
            if not rows:
                return total
            results = await asyncio.gather(*map(self._start, rows))
            started = [row["id"] for row, ok in zip(rows, results, strict=True) if ok]
            await mark_started(self._pool, started)
            total += len(started)
            if len(started) < len(rows):
                raise ConnectionError(f"Temporal refused {len(rows) - len(started)} starts")

    async def _start(self, row: asyncpg.Record) -> bool:
        async with self._starts:
            try:
                await start_workflow(self._client, self._settings, row)
            except Exception as error:
                log.warning("could not start the workflow of %s: %r", row["id"], error)
                return False
        return True
