"""P1 for escrows: concurrent creates with one key make one escrow and one saga; the key with
other parameters is a 422; a repeat in flight is a 409, then the same escrow."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest
from temporalio.client import Client

from core.contracts import escrow_workflow_id
from tests.escrow.support import assert_conserved, balances, escrow_body, keyed, wallets
from tests.support import wait_for

pytestmark = pytest.mark.usefixtures("pipeline")
RETRIES = 2000


def _in_use(response: httpx.Response) -> bool:
    return response.status_code == 409 and (
        response.json()["type"] == "/problems/idempotency-key-in-use"
    )


async def test_p1_fifty_concurrent_creates_with_one_key_make_one_escrow(
    http: httpx.AsyncClient, pool: asyncpg.Pool, temporal_client: Client
) -> None:
    """Every answer names the same escrow (or says retry); one row, one debit, one saga."""
    merchant, (source, winner) = await wallets(http, pool, [100, 0])
    body = escrow_body(merchant, [(source, 40)], wallet=winner, reference="p1")
    key = str(uuid.uuid4())
    answers = await asyncio.gather(
        *(http.post("/v1/escrows", json=body, headers=keyed(key)) for _ in range(50))
    )
    named = {a.json()["id"] for a in answers if not _in_use(a)}
    assert len(named) == 1, [a.text for a in answers if not _in_use(a)]
    assert all(a.status_code in (201, 202) or _in_use(a) for a in answers)
    (escrow_id,) = named
    assert await pool.fetchval("SELECT count(*) FROM escrows WHERE merchant_id = $1", merchant) == 1
    handle = temporal_client.get_workflow_handle(escrow_workflow_id(escrow_id))
    assert await handle.query("status") == "funded"
    starts = [
        e
        for e in (await handle.fetch_history()).events
        if e.HasField("workflow_execution_started_event_attributes")
    ]
    assert len(starts) == 1
    assert await balances(pool, [source, escrow_id]) == [60, 40]

    other = escrow_body(merchant, [(source, 41)], wallet=winner, reference="p1")
    reused = await http.post("/v1/escrows", json=other, headers=keyed(key))
    assert reused.status_code == 422, reused.text
    assert reused.json()["type"] == "/problems/idempotency-key-reused"
    await assert_conserved(pool)


async def test_p1_a_repeat_in_flight_gets_409_then_the_same_escrow(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """While the first create waits on its merchant's feed, a repeat is told to retry; once the
    first is done, the repeat answers with the same escrow, replayed."""
    merchant, (source, winner) = await wallets(http, pool, [10, 0])
    body = escrow_body(merchant, [(source, 10)], wallet=winner)
    key = str(uuid.uuid4())
    async with pool.acquire() as blocker:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("SELECT 1 FROM merchants WHERE id = $1 FOR UPDATE", merchant)
        first = asyncio.create_task(http.post("/v1/escrows", json=body, headers=keyed(key)))

        async def claimed() -> bool:
            status = await pool.fetchval("SELECT status FROM idempotency_keys WHERE key = $1", key)
            return bool(status == "running")

        await wait_for(claimed, timeout=10, what="the first create to claim its key")
        repeat = await http.post("/v1/escrows", json=body, headers=keyed(key))
        assert _in_use(repeat), repeat.text
        assert repeat.headers["retry-after"] == "1"
        await blocking.rollback()
    answer = await first
    assert answer.status_code == 201, answer.text
    replayed = await http.post("/v1/escrows", json=body, headers=keyed(key))
    assert replayed.status_code == 201, replayed.text
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json()["id"] == answer.json()["id"]
    assert replayed.json()["status"] == "funded"
