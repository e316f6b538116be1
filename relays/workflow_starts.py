"""The workflow starts relay: starts the workflow of every row that does not have one yet, for
every kind in :data:`KINDS` (exchange requests, escrows).

The api starts a row's workflow right after the row commits and marks it started
(:mod:`core.workflow_starts`); this relay, hosted by the worker, starts whatever is still
unmarked: rows created while Temporal was unreachable (the api NOTIFYs when its start fails) or
whose api died between commit and start (the periodic sweep). Starting is idempotent, so the relay
and the api may both start one row without harm. No row lock is held while Temporal answers, so
no write waits behind the relay.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from temporalio.client import Client

from core.contracts import WORKFLOW_STARTS_CHANNEL
from core.escrow_workflow import ESCROWS
from core.exchange_workflow import EXCHANGE_REQUESTS
from core.settings import Settings
from core.workflow_starts import WorkflowKind, mark_started, start_workflow
from relays.loop import NotifiedRelay

__all__ = ["KINDS", "WorkflowStartRelay"]

KINDS: tuple[WorkflowKind, ...] = (EXCHANGE_REQUESTS, ESCROWS)
"""Every kind of row that owns a workflow; a new kind is added here."""
BATCH = 200
log = logging.getLogger("switchboard.relay.workflow_starts")


class WorkflowStartRelay(NotifiedRelay):
    """Starts the missing workflows of every kind; see the module docstring."""

    channel = WORKFLOW_STARTS_CHANNEL

    def __init__(
        self,
        pool: asyncpg.Pool,
        client: Client,
        settings: Settings,
        kinds: tuple[WorkflowKind, ...] = KINDS,
    ) -> None:
        super().__init__(settings.database_url, settings.relay_sweep_seconds)
        self._pool = pool
        self._client = client
        self._settings = settings
        self._kinds = kinds
        self._starts = asyncio.Semaphore(settings.relay_start_concurrency)

    async def drain(self) -> int:
        total = 0
        refused = 0
        # Every kind gets its turn even when Temporal refuses another's starts.
        for kind in self._kinds:
            started, failed = await self._drain(kind)
            total += started
            refused += failed
        if refused:
            raise ConnectionError(f"Temporal refused {refused} starts")
        return total

    async def _drain(self, kind: WorkflowKind) -> tuple[int, int]:
        total = 0
        while True:
            rows = await self._pool.fetch(
                f"SELECT {kind.columns} FROM {kind.table} WHERE workflow_started_at IS NULL"
                " ORDER BY created_at LIMIT $1",
                BATCH,
            )
            if not rows:
                return total, 0
            results = await asyncio.gather(*(self._start(kind, row) for row in rows))
            started = [row["id"] for row, ok in zip(rows, results, strict=True) if ok]
            await mark_started(self._pool, kind, started)
            total += len(started)
            if len(started) < len(rows):
                return total, len(rows) - len(started)

    async def _start(self, kind: WorkflowKind, row: asyncpg.Record) -> bool:
        async with self._starts:
            try:
                await start_workflow(self._client, self._pool, self._settings, kind, row)
            except Exception as error:
                log.warning(
                    "could not start the workflow of %s %s: %r", kind.name, row["id"], error
                )
                return False
        return True
