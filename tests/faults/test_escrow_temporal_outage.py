"""Escrows created while Temporal is unreachable: each is acknowledged (202 with its URL, still
``created``) within the start bound, never a 5xx; a release meanwhile is a 503 problem (its key
keeps the order, which every repeat hands over again). Once Temporal is back, the worker's
workflow starts relay starts each escrow's saga exactly once: every escrow is funded with one
debit per source, and the release retried with the same key goes through."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import httpx
from temporalio.client import Client

from core.contracts import escrow_workflow_id
from core.escrow import debit_key
from core.settings import Settings
from core.workflow_starts import START_TIMEOUT_SECONDS
from tests.conftest import temporal_dev_server
from tests.escrow.support import assert_conserved, balances, escrow_body, keyed, wallets
from tests.money_support import assert_books_balance
from tests.support import isolated_settings, running_api, running_worker, stores, wait_for

ESCROWS = 4


async def unstarted(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch("SELECT id FROM escrows WHERE workflow_started_at IS NULL")
    return {row["id"] for row in rows}


async def statuses(pool: asyncpg.Pool, ids: set[str]) -> set[str]:
    rows = await pool.fetch("SELECT status FROM escrows WHERE id = ANY($1::text[])", list(ids))
    return {row["status"] for row in rows}


async def test_escrows_created_while_temporal_is_down_are_each_funded_once_it_is_back(
    postgres_admin_url: str, settings: Settings, tmp_path: Path
) -> None:
    """Temporal down at create: 202s with Location, no saga, a release is a 503 problem; back
    up: the relay starts one saga per escrow, each funded with one debit per source."""
    server = temporal_dev_server(tmp_path / "temporal")
    await asyncio.to_thread(server.start)
    try:
        settings = await isolated_settings(
            settings, postgres_admin_url, temporal_address=server.address
        )
        async with (
            stores(settings) as (pool, redis),
            running_api(settings) as api_url,
            httpx.AsyncClient(base_url=api_url, timeout=30) as http,
        ):
            merchant, (first, second, winner) = await wallets(http, pool, [100, 100, 0])
            # One escrow funded before the outage (so the api's client is connected), to be
            # released during it.
            async with running_worker(settings, await Client.connect(server.address), pool, redis):
                held = await http.post(
                    "/v1/escrows",
                    json=escrow_body(merchant, [(first, 10)], wallet=winner),
                    headers=keyed(),
                )
            assert held.status_code == 201, held.text
            held_id = held.json()["id"]
            assert held.json()["status"] == "funded"
            await asyncio.to_thread(server.stop)

            began = time.monotonic()
            created = await asyncio.gather(
                *(
                    http.post(
                        "/v1/escrows",
                        json=escrow_body(merchant, [(first, 1 + n), (second, 5)], wallet=winner),
                        headers=keyed(f"outage-{n}"),
                    )
                    for n in range(ESCROWS)
                )
            )
            acked_in = time.monotonic() - began
            for response in created:
                assert response.status_code == 202, response.text
                assert response.headers["location"] == f"/v1/escrows/{response.json()['id']}"
                assert response.json()["status"] == "created"
            ids = {response.json()["id"] for response in created}
            assert await unstarted(pool) == ids

            release_key = "release-during-outage"
            refused = await http.post(
                f"/v1/escrows/{held_id}/release", json={}, headers=keyed(release_key)
            )
            assert refused.status_code == 503, refused.text
            problem = refused.json()
            assert refused.headers["content-type"] == "application/problem+json"
            assert problem["type"] == "/problems/workflow-engine-unavailable"
            assert problem["title"] == "Service Unavailable"
            assert "webhook" not in (problem["title"] + problem["detail"]).lower()
            assert refused.headers["retry-after"] == "2"

            await asyncio.to_thread(server.start)
            client = await Client.connect(server.address)
            async with running_worker(settings, client, pool, redis):

                async def all_funded() -> bool:
                    return not await unstarted(pool) and await statuses(pool, ids) == {"funded"}

                await wait_for(all_funded, timeout=60, what="the relay to start every saga")

                async def one_run_each() -> bool:
                    for escrow_id in ids:
                        query = f'WorkflowId = "{escrow_workflow_id(escrow_id)}"'
                        if len([run async for run in client.list_workflows(query)]) != 1:
                            return False
                    return True

                await wait_for(one_run_each, what="exactly one saga per escrow")
                debits = await pool.fetch(
                    "SELECT idempotency_key, count(*) AS n FROM ledger_transactions"
                    " WHERE idempotency_key = ANY($1::text[]) GROUP BY idempotency_key",
                    [debit_key(e, w) for e in ids for w in (first, second)],
                )
                assert len(debits) == 2 * ESCROWS
                assert {row["n"] for row in debits} == {1}
                held_total = 10 + sum(1 + n for n in range(ESCROWS)) + 5 * ESCROWS
                assert await balances(pool, [first, second]) == [
                    100 - 10 - sum(1 + n for n in range(ESCROWS)),
                    100 - 5 * ESCROWS,
                ]
                assert sum(await balances(pool, [held_id, *ids])) == held_total

                # The key kept the order (accepted, not handed over): the same key hands it
                # over now and the escrow is released.
                released = await http.post(
                    f"/v1/escrows/{held_id}/release", json={}, headers=keyed(release_key)
                )
                assert released.status_code == 200, released.text
                assert released.json()["status"] == "released"
                assert released.headers.get("idempotent-replayed") == "true"
            await assert_books_balance(pool)
            await assert_conserved(pool)
    finally:
        await asyncio.to_thread(server.stop)
    # Concurrent creates were each bounded by the start bound, not by Temporal's retries.
    assert acked_in < START_TIMEOUT_SECONDS + 3, acked_in
