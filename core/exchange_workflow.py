"""Starting and telling an exchange request's workflow, from the api and from the worker's relay.

The api commits a request (or a transition) first and only then talks to Temporal, in the
background: neither a create nor a claim waits for it. The start is :data:`EXCHANGE_REQUESTS`, a
kind of :mod:`core.workflow_starts`: idempotent, marked in ``workflow_started_at`` once it
returned, and made by the worker's relay for any request left unmarked (Temporal away at create
time, or the api dying between commit and start). A lost signal costs only time: the workflow's
timers re-read Postgres before they act.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.common import SearchAttributePair
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import (
    ENTITY_ID,
    MERCHANT_ID,
    ExchangeState,
    ExchangeStatus,
    ExchangeWorkflowInput,
    Priority,
    exchange_workflow_id,
)
from core.settings import Settings
from core.workflow_starts import WorkflowKind, start_and_mark

__all__ = [
    "CHANGED_SIGNAL",
    "EXCHANGE_REQUESTS",
    "WORKFLOW_NAME",
    "ExchangeWorkflows",
    "state_of",
]

WORKFLOW_NAME = "ExchangeRequestWorkflow"
""":class:`workflows.exchange.ExchangeRequestWorkflow`, named so the api need not import it."""
CHANGED_SIGNAL = "changed"
RPC_TIMEOUT = timedelta(seconds=2)
# Bounds one background start or signal, the SDK's own retries of an unreachable server included.
BACKGROUND_TIMEOUT_SECONDS = 5.0
log = logging.getLogger("switchboard.exchange")


def state_of(row: asyncpg.Record, age_seconds: float = 0.0) -> ExchangeState:
    """The workflow's view of a request row: a row just committed is ``age_seconds`` 0."""
    return ExchangeState(
        status=ExchangeStatus(row["status"]),
        version=row["version"],
        assignee=row["assignee"],
        age_seconds=age_seconds,
    )


async def _workflow_input(
    _: asyncpg.Pool, settings: Settings, row: asyncpg.Record
) -> ExchangeWorkflowInput:
    return ExchangeWorkflowInput(
        request_id=row["id"],
        merchant_id=row["merchant_id"],
        pending_sla_seconds=settings.exchange_pending_sla_seconds,
        assigned_timeout_seconds=settings.exchange_assigned_timeout_seconds,
    )


EXCHANGE_REQUESTS = WorkflowKind(
    name="exchange request",
    table="exchange_requests",
    columns="id, merchant_id",
    workflow=WORKFLOW_NAME,
    workflow_id=exchange_workflow_id,
    task_queue=lambda settings: settings.exchange_task_queue,
    arguments=_workflow_input,
    search_attributes=lambda row: [
        SearchAttributePair(MERCHANT_ID, row["merchant_id"]),
        SearchAttributePair(ENTITY_ID, row["id"]),
    ],
    summary=lambda row: f"exchange request {row['id']} · {row['merchant_id']}",
    priority=Priority.MONEY,
)
"""Each exchange request owns one :class:`workflows.exchange.ExchangeRequestWorkflow`."""


class ExchangeWorkflows:
    """The api's side: after a commit, start or signal the request's workflow in the background
    (never in the answer's path), keeping hold of the tasks until they finish."""

    def __init__(self, client: Client, pool: asyncpg.Pool, settings: Settings) -> None:
        self._client = client
        self._pool = pool
        self._settings = settings
        self._tasks: set[asyncio.Task[None]] = set()

    def created(self, row: asyncpg.Record) -> None:
        """A request was created (or its create replayed while still unmarked): start it."""
        self._spawn(self._start(row))

    def changed(self, row: asyncpg.Record) -> None:
        """A transition committed: tell the workflow, so it re-arms its timers."""
        self._spawn(self._signal(row))

    async def close(self) -> None:
        """Let background calls finish (each is bounded); what they miss the relay and the
        workflows' timers make up for."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, row: asyncpg.Record) -> None:
        await start_and_mark(self._client, self._pool, self._settings, EXCHANGE_REQUESTS, row)

    async def _signal(self, row: asyncpg.Record) -> None:
        handle = self._client.get_workflow_handle(exchange_workflow_id(row["id"]))
        try:
            async with asyncio.timeout(BACKGROUND_TIMEOUT_SECONDS):
                await handle.signal(CHANGED_SIGNAL, state_of(row), rpc_timeout=RPC_TIMEOUT)
        except RPCError as error:
            # Not started yet (it reads Postgres when it starts) or finished: nothing to tell.
            if error.status != RPCStatusCode.NOT_FOUND:
                log.warning("could not signal the workflow of %s: %r", row["id"], error)
        except Exception as error:
            log.warning("could not signal the workflow of %s: %r", row["id"], error)
