"""The api waits for a create's funding outcome in Postgres (:mod:`api.escrow_moves`): woken by the
transition's NOTIFY, it answers ``funded`` without asking the workflow, so the saga spends no
workflow task on the answer."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from api.escrow_moves import EscrowMoves
from core.contracts import EscrowStatus, escrow_workflow_id
from core.settings import Settings
from tests.escrow.support import escrow_body, keyed, wallets
from tests.support import wait_for

pytestmark = pytest.mark.usefixtures("pipeline")


async def test_the_funding_outcome_costs_the_saga_no_workflow_task(
    http: httpx.AsyncClient, pool: asyncpg.Pool, temporal_client: Client
) -> None:
    merchant, (source,) = await wallets(http, pool, [40])
    body = escrow_body(merchant, [(source, 40)], account="acct_wait")
    created = await http.post("/v1/escrows", json=body, headers=keyed())
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "funded"

    handle = temporal_client.get_workflow_handle(escrow_workflow_id(created.json()["id"]))

    async def kinds() -> list[EventType.ValueType]:
        return [event.event_type for event in (await handle.fetch_history()).events]

    async def funding_recorded() -> bool:
        # The answer may come before the task that funded the escrow is recorded as completed.
        return EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in await kinds()

    await wait_for(funding_recorded, what="the funding task to complete")
    recorded = await kinds()
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED not in recorded
    # Funding is the first workflow task; nothing has woken the workflow since.
    assert recorded.count(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED) == 1


async def test_a_wait_ends_when_the_escrow_moves_or_at_its_deadline(
    http: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    merchant, (source,) = await wallets(http, pool, [40])
    body = escrow_body(merchant, [(source, 40)], account="acct_wait")
    escrow_id = (await http.post("/v1/escrows", json=body, headers=keyed())).json()["id"]
    moves = EscrowMoves(settings.database_url)
    try:
        # Not held: the wait ends at its deadline, the escrow still funded.
        started = asyncio.get_running_loop().time()
        await moves.wait(pool, escrow_id, (EscrowStatus.FUNDED,), 0.3)
        assert asyncio.get_running_loop().time() - started >= 0.3
        # Released meanwhile (by the saga, woken here by its NOTIFY): the wait ends then.
        waiting = asyncio.create_task(
            moves.wait(pool, escrow_id, (EscrowStatus.FUNDED, EscrowStatus.RELEASING), 30)
        )
        released = await http.post(f"/v1/escrows/{escrow_id}/release", json={}, headers=keyed())
        assert released.status_code == 200, released.text
        await asyncio.wait_for(waiting, 30)
        status = await pool.fetchval("SELECT status FROM escrows WHERE id = $1", escrow_id)
        assert status == EscrowStatus.RELEASED
    finally:
        await moves.close()
