"""The worker SIGKILLed while exchange request timers are releasing idle assignments and
operators are advancing the same requests: afterwards every request moved exactly once (by its
timer or by its assignee, never both, never twice), every audit log is a valid path of the
state machine ending in the request's status, and no workflow failed.

The worker is a real ``python worker.py`` child on the session's dev server (real time); the
api runs in this process. Assignments time out after ``TIMEOUT``; half the assignees advance
their request at that moment; the worker is killed once the first releases have committed and
started again at once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import asyncpg
import httpx
from temporalio.client import Client, WorkflowExecutionStatus

from activities.exchange import SLA_ACTOR
from core.contracts import exchange_workflow_id
from core.settings import Settings
from tests.exchange.support import act, assert_valid_path, create_request, operators
from tests.faults.workload import WorkerProcess
from tests.money_support import new_merchant
from tests.support import fresh_database, running_api, stores, wait_for

REQUESTS = 30
TIMEOUT_SECONDS = 4.0
EXCHANGE_SETTINGS = (
    "exchange_task_queue",
    "exchange_assigned_timeout_seconds",
    "exchange_pending_sla_seconds",
)
log = logging.getLogger(__name__)


async def count_released(pool: asyncpg.Pool) -> int:
    released: int = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE entity_type = 'exchange_request' AND actor = $1",
        SLA_ACTOR,
    )
    return released


async def test_worker_killed_while_timers_release_assignments_loses_and_doubles_nothing(
    postgres_admin_url: str, settings: Settings, temporal_client: Client, tmp_path: Path
) -> None:
    """SIGKILL mid-release: each request moved once (timer xor assignee); valid audit paths."""
    settings = settings.model_copy(
        update={
            "database_url": await fresh_database(postgres_admin_url),
            "task_queue": f"tq-xk-{uuid.uuid4().hex[:8]}",
            "exchange_task_queue": f"xq-xk-{uuid.uuid4().hex[:8]}",
            "exchange_assigned_timeout_seconds": TIMEOUT_SECONDS,
            "exchange_pending_sla_seconds": 3600.0,
        }
    )
    async with (
        running_api(settings) as api_url,
        httpx.AsyncClient(base_url=api_url, timeout=30) as http,
        stores(settings) as (pool, _),
    ):
        worker = WorkerProcess(settings, tmp_path, forward=EXCHANGE_SETTINGS)
        worker.start()
        try:
            await worker.wait_ready()
            merchant = await new_merchant(pool)
            desk = await operators(pool, REQUESTS)
            requests = [(await create_request(http, merchant))["id"] for _ in desk]

            async def all_started() -> bool:
                return not await pool.fetchval(
                    "SELECT count(*) FROM exchange_requests WHERE workflow_started_at IS NULL"
                )

            await wait_for(all_started, what="every request's workflow to start")
            for request_id, (_, key) in zip(requests, desk, strict=True):
                assert (await act(http, request_id, "claim", key)).status_code == 200
            eager = list(zip(requests, desk, strict=True))[::2]

            async def released_some() -> int:
                return await count_released(pool)

            await wait_for(released_some, timeout=30, interval=0.005, what="the first release")
            advancing = asyncio.gather(
                *(act(http, r, "advance", key, to="processing") for r, (_, key) in eager)
            )
            await worker.kill()
            answers = await advancing
            at_kill = await count_released(pool)
            worker.start()
            await worker.wait_ready()
            advanced = {r for (r, _), a in zip(eager, answers, strict=True) if a.status_code == 200}

            async def all_moved() -> bool:
                return await count_released(pool) + len(advanced) == REQUESTS

            await wait_for(all_moved, timeout=60, what="every idle assignment to be released")
            for request_id in requests:
                path = await assert_valid_path(pool, request_id)
                by_timer = [step for step in path if step["actor"] == SLA_ACTOR]
                if request_id in advanced:
                    assert by_timer == [] and path[-1]["to_state"] == "processing", path
                else:
                    assert len(by_timer) == 1 and path[-1]["to_state"] == "pending", path
            for request_id in requests:
                handle = temporal_client.get_workflow_handle(exchange_workflow_id(request_id))
                description = await handle.describe()
                assert description.status == WorkflowExecutionStatus.RUNNING
        finally:
            await worker.stop()
            for request_id in requests:
                handle = temporal_client.get_workflow_handle(exchange_workflow_id(request_id))
                await handle.terminate()
    log.info(
        "%d releases had committed at the kill; %d of %d advanced by their assignee",
        at_kill,
        len(advanced),
        len(eager),
    )
    assert worker.kills == 1
