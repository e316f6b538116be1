"""Starting and telling an exchange request's workflow, from the api and from the worker's relay.

The api commits a request (or a transition) first and only then talks to Temporal, in the
background: neither a create nor a claim waits for it. Starting is idempotent (the workflow id
is the request's; a repeat start finds the run, running or closed) and is marked in Postgres
(``workflow_started_at``) once it returned. A request still unmarked is started by the worker's
exchange relay (``relays/exchange.py``), so Temporal being away at create time, or the api
dying between commit and start, leaves no acknowledged request without its workflow. A lost
signal costs only time: the workflow's timers re-read Postgres before they act.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.common import (
    Priority as TemporalPriority,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import (
    ENTITY_ID,
    EXCHANGE_CHANNEL,
    MERCHANT_ID,
    ExchangeState,
    ExchangeStatus,
    ExchangeWorkflowInput,
    Priority,
    exchange_workflow_id,
)
from core.settings import Settings

__all__ = [
    "CHANGED_SIGNAL",
    "WORKFLOW_NAME",
    "ExchangeWorkflows",
    "mark_started",
    "start_workflow",
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


async def start_workflow(client: Client, settings: Settings, row: asyncpg.Record) -> None:
    """Start the request's workflow unless it was started before (running or finished)."""
    # A closed run with this id (it ran and finished) raises: started once is what counts.
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await client.start_workflow(
            WORKFLOW_NAME,
            ExchangeWorkflowInput(
                request_id=row["id"],
                merchant_id=row["merchant_id"],
                pending_sla_seconds=settings.exchange_pending_sla_seconds,
                assigned_timeout_seconds=settings.exchange_assigned_timeout_seconds,
            ),
            id=exchange_workflow_id(row["id"]),
            task_queue=settings.exchange_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(MERCHANT_ID, row["merchant_id"]),
                    SearchAttributePair(ENTITY_ID, row["id"]),
                ]
            ),
            static_summary=f"exchange request {row['id']} · {row['merchant_id']}",
            priority=TemporalPriority(priority_key=Priority.MONEY),
            rpc_timeout=RPC_TIMEOUT,
        )


async def mark_started(pool: asyncpg.Pool, request_ids: Sequence[str]) -> None:
    """Record that these requests' workflows were started (not a transition: no audit)."""
    await pool.execute(
        "UPDATE exchange_requests SET workflow_started_at = clock_timestamp()"
        " WHERE id = ANY($1::text[]) AND workflow_started_at IS NULL",
        list(request_ids),
    )


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
        try:
            async with asyncio.timeout(BACKGROUND_TIMEOUT_SECONDS):
                await start_workflow(self._client, self._settings, row)
            await mark_started(self._pool, [row["id"]])
        except Exception as error:
            log.warning("could not start the workflow of %s (the relay will): %r", row["id"], error)
            try:
                await self._pool.execute("SELECT pg_notify($1, '')", EXCHANGE_CHANNEL)
            except Exception as notify_error:
                log.warning("could not wake the exchange relay: %r", notify_error)

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
