"""Exchange requests created while Temporal is unreachable: each is acknowledged (201) at once,
and once Temporal is back each gets exactly one workflow, from a replay of its create (which
retries the start) or from the worker's exchange relay (which starts every request left without
one)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import httpx
from temporalio.client import Client

from core.contracts import exchange_workflow_id
from core.settings import Settings
from tests.conftest import temporal_dev_server
from tests.exchange.support import create_request
from tests.money_support import new_merchant
from tests.support import isolated_settings, running_api, running_worker, stores, wait_for


async def unstarted(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch(
        "SELECT id FROM exchange_requests WHERE workflow_started_at IS NULL ORDER BY id"
    )
    return {row["id"] for row in rows}


async def test_requests_created_while_temporal_is_down_each_get_one_workflow_once_it_is_back(
    postgres_admin_url: str, settings: Settings, tmp_path: Path
) -> None:
    """Temporal down at create: 201s, no workflow; back up: a replayed create starts its own,
    the relay starts the rest; one run per request."""
    server = temporal_dev_server(tmp_path / "temporal")
    await asyncio.to_thread(server.start)
    try:
        settings = await isolated_settings(
            settings, postgres_admin_url, temporal_address=server.address
        )
        await asyncio.to_thread(server.stop)
        async with (
            stores(settings) as (pool, redis),
            running_api(settings) as api_url,
            httpx.AsyncClient(base_url=api_url, timeout=30) as http,
        ):
            merchant = await new_merchant(pool)
            began = time.monotonic()
            created = [
                await create_request(http, merchant, key=f"outage-{n}", customer_id=f"c-{n}")
                for n in range(5)
            ]
            acked_in = time.monotonic() - began
            ids = {request["id"] for request in created}
            assert await unstarted(pool) == ids

            await asyncio.to_thread(server.start)
            client = await Client.connect(server.address)
            replayed = await create_request(http, merchant, key="outage-0", customer_id="c-0")
            assert replayed["id"] == created[0]["id"]

            async def first_started() -> bool:
                return created[0]["id"] not in await unstarted(pool)

            await wait_for(first_started, what="the replayed create to start its workflow")
            assert await unstarted(pool) == ids - {created[0]["id"]}
            async with running_worker(settings, client, pool, redis):

                async def all_started() -> bool:
                    return not await unstarted(pool)

                await wait_for(all_started, what="the relay to start the rest")

                async def one_run_each() -> bool:
                    for request_id in ids:
                        query = f'WorkflowId = "{exchange_workflow_id(request_id)}"'
                        runs = [run async for run in client.list_workflows(query)]
                        if len(runs) != 1:
                            return False
                    return True

                await wait_for(one_run_each, what="exactly one run per request")
                for request_id in ids:
                    handle = client.get_workflow_handle(exchange_workflow_id(request_id))
                    assert (await handle.describe()).status is not None
    finally:
        await asyncio.to_thread(server.stop)
    # The api answered without waiting for Temporal (five creates, well under a start timeout).
    assert acked_in < 5.0, acked_in
