"""Workflow starts that survive an unreachable Temporal: one mechanism for every kind of row that
owns one workflow (an exchange request, an escrow, ...).

The api commits a row first and only then starts its workflow. Starting is idempotent (the
workflow id is a business key; a repeat start finds the run, running or closed) and is marked in
Postgres (the table's ``workflow_started_at``) once it returned. A row still unmarked is started
by the worker's relay (:mod:`relays.workflow_starts`): the api NOTIFYs it when a start fails,
and its periodic sweep finds the rows whose api died between commit and start. So Temporal being
away, or the api dying, never leaves an acknowledged row without its workflow.

A kind (:class:`WorkflowKind`) says where its rows live and how to start a row's workflow; the
relay serves :data:`relays.workflow_starts.KINDS`. Each table needs a nullable
``workflow_started_at`` and an index on ``created_at`` of the rows where it is NULL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
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

from core.contracts import WORKFLOW_STARTS_CHANNEL, Priority
from core.db import Connection
from core.settings import Settings

__all__ = [
    "START_TIMEOUT_SECONDS",
    "WorkflowKind",
    "mark_started",
    "start_and_mark",
    "start_workflow",
    "unstarted",
    "wake_relay",
]

RPC_TIMEOUT = timedelta(seconds=2)
START_TIMEOUT_SECONDS = 5.0
"""Bounds one start from the api, the SDK's own retries of an unreachable server included."""
log = logging.getLogger("switchboard.workflow_starts")


@dataclass(frozen=True)
class WorkflowKind:
    """A table whose rows each own one workflow, and how to start a row's workflow.

    ``columns`` are read for ``arguments``, ``search_attributes`` and ``summary``; they include
    ``id``, from which ``workflow_id`` derives the workflow's id. ``arguments`` may read more
    (an escrow's sources) through the pool.
    """

    name: str
    table: str
    columns: str
    workflow: str
    workflow_id: Callable[[str], str]
    task_queue: Callable[[Settings], str]
    arguments: Callable[[asyncpg.Pool, Settings, asyncpg.Record], Awaitable[Any]]
    search_attributes: Callable[[asyncpg.Record], Sequence[SearchAttributePair[Any]]]
    summary: Callable[[asyncpg.Record], str]
    priority: Priority | None = None


async def start_workflow(
    client: Client, pool: asyncpg.Pool, settings: Settings, kind: WorkflowKind, row: asyncpg.Record
) -> None:
    """Start the row's workflow unless it was started before (running or finished)."""
    arguments = await kind.arguments(pool, settings, row)
    # A closed run with this id (it ran and finished) raises: started once is what counts.
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await client.start_workflow(
            kind.workflow,
            arguments,
            id=kind.workflow_id(row["id"]),
            task_queue=kind.task_queue(settings),
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(kind.search_attributes(row)),
            static_summary=kind.summary(row),
            priority=(
                TemporalPriority(priority_key=kind.priority)
                if kind.priority is not None
                else TemporalPriority.default
            ),
            rpc_timeout=RPC_TIMEOUT,
        )


async def mark_started(pool: asyncpg.Pool, kind: WorkflowKind, ids: Sequence[str]) -> None:
    """Record that these rows' workflows were started (not a transition: no audit)."""
    await pool.execute(
        f"UPDATE {kind.table} SET workflow_started_at = clock_timestamp()"
        " WHERE id = ANY($1::text[]) AND workflow_started_at IS NULL",
        list(ids),
    )


async def unstarted(pool: asyncpg.Pool, kind: WorkflowKind, row_id: str) -> asyncpg.Record | None:
    """The row if its workflow's start is not marked yet, else None."""
    row: asyncpg.Record | None = await pool.fetchrow(
        f"SELECT {kind.columns} FROM {kind.table} WHERE id = $1 AND workflow_started_at IS NULL",
        row_id,
    )
    return row


async def start_and_mark(
    client: Client,
    pool: asyncpg.Pool,
    settings: Settings,
    kind: WorkflowKind,
    row: asyncpg.Record,
    *,
    timeout: float = START_TIMEOUT_SECONDS,
) -> bool:
    """The api's start of a committed row's workflow, bounded by ``timeout``: True once started
    and marked; False (logged, and the relay woken to start it) if Temporal could not be
    reached. Never raises for an unreachable Temporal or Postgres."""
    try:
        async with asyncio.timeout(timeout):
            await start_workflow(client, pool, settings, kind, row)
        await mark_started(pool, kind, [row["id"]])
    except Exception as error:
        log.warning(
            "could not start the workflow of %s %s (the relay will): %r",
            kind.name,
            row["id"],
            error,
        )
        try:
            await wake_relay(pool)
        except Exception as notify_error:
            log.warning("could not wake the workflow starts relay: %r", notify_error)
        return False
    return True


async def wake_relay(db: asyncpg.Pool | Connection) -> None:
    """Wake the worker's workflow starts relay now rather than at its next sweep."""
    await db.execute("SELECT pg_notify($1, '')", WORKFLOW_STARTS_CHANNEL)
