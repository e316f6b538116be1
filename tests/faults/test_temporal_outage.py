"""D2 (RELIABILITY.md §1): SIGKILL the Temporal server under load, keep receiving, restart it.

A dev server of its own with a data dir (persistent SQLite) serves an in-process worker and
relay. Mid-load the server is SIGKILLed; ~100 more webhooks are sent while it is down and each
must be acknowledged (the ingress only writes Postgres). After the server restarts on the same
data, every acknowledged webhook must settle exactly once, with no failed workflow.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from pathlib import Path

import httpx
from prometheus_client import REGISTRY
from temporalio.client import Client

from core.settings import Settings
from tests.conftest import temporal_dev_server
from tests.faults.workload import (
    Sender,
    assert_exactly_once,
    assert_workflows_completed,
    build_workload,
    fault_point,
    final_count,
    in_background,
    settle,
)
from tests.support import (
    add_partner,
    fresh_database,
    running_api,
    running_worker,
    stores,
    wait_for,
)

# Fixes both workloads and the kill point. Change it to explore.
SEED = 7233
log = logging.getLogger(__name__)


async def test_temporal_killed_mid_load_keeps_acking_and_applies_everything_once(
    postgres_admin_url: str, settings: Settings, tmp_path: Path
) -> None:
    """Temporal down mid-load: every webhook is still acked, and all apply once after it returns."""
    rng = random.Random(SEED)
    before = build_workload(SEED, payments=70, merchants=4, tag="d2a")
    during = build_workload(SEED + 1, payments=40, merchants=4, tag="d2b")
    server = temporal_dev_server(tmp_path / "temporal")
    await asyncio.to_thread(server.start)
    marks: dict[str, float] = {}
    try:
        client = await Client.connect(server.address)
        settings = settings.model_copy(
            update={
                "database_url": await fresh_database(postgres_admin_url),
                "temporal_address": server.address,
                "task_queue": f"tq-d2-{uuid.uuid4().hex[:8]}",
            }
        )
        async with (
            running_api(settings) as api_url,
            httpx.AsyncClient(base_url=api_url, timeout=30) as http,
            stores(settings) as (pool, redis),
        ):
            partner = await add_partner(pool, http)
            sender = Sender(partner)
            async with running_worker(settings, client, pool, redis):
                began = time.monotonic()
                load = sender.send_chains(before.chains, concurrency=8, accept=(202,))
                async with in_background(load) as sending:
                    at_least = rng.randint(20, 80)
                    settled = await wait_for(
                        fault_point(
                            pool, partner.id, at_least=at_least, total=len(before.webhooks)
                        ),
                        timeout=60,
                        interval=0.01,
                        what=f"{at_least} webhooks to settle before the kill",
                    )
                    await asyncio.to_thread(server.kill)
                    refused_before = _refused_starts()
                    marks["killed"] = time.monotonic() - began
                    log.info("Temporal killed with %d webhooks settled", settled)

                    acked_before_outage = len(sender.acked)
                    await sender.send_chains(during.chains, concurrency=8, accept=(202,))
                    await sending
                marks["sent_during_outage"] = time.monotonic() - began
                acked_during_outage = len(sender.acked) - acked_before_outage
                # Restart only once the relay has seen Temporal refuse starts (it backs off).
                await wait_for(
                    lambda: _relay_refusals(above=refused_before),
                    timeout=30,
                    what="the relay to hit the outage",
                )
                assert not server.running, "Temporal came back during the outage"
                progressed = await pool.fetchval(
                    "SELECT count(*) FROM webhooks WHERE webhook_id = ANY($1::text[])"
                    " AND status <> 'received'",
                    [hook.webhook_id for hook in during.webhooks],
                )
                assert progressed == 0, "webhooks received during the outage went further"
                settled_during_outage = await final_count(pool, partner.id)

                await asyncio.to_thread(server.start)
                marks["restarted"] = time.monotonic() - began
                await settle(pool, sender.acked.values(), timeout=90)
                marks["settled"] = time.monotonic() - began
                # Workflows finish after their rows (publish, then the completion reaches Temporal).
                total = len(before.webhooks) + len(during.webhooks)
                await assert_workflows_completed(client, settings.task_queue, total)
                marks["completed"] = time.monotonic() - began
            log.info(
                "D2 seed %d: %d acked while Temporal was down, %d settled at restart; timeline %s",
                SEED,
                acked_during_outage,
                settled_during_outage,
                marks,
            )
            assert sender.unexpected == []
            assert sender.statuses == {202: total}
            assert acked_during_outage >= len(during.webhooks)
            await assert_exactly_once(pool, partner.id, [before, during], sender.acked)
    finally:
        await asyncio.to_thread(server.stop)


def _refused_starts() -> float:
    """Workflow starts the in-process relay has seen fail (a process-wide counter)."""
    value = REGISTRY.get_sample_value("switchboard_workflows_started_total", {"result": "failed"})
    return value or 0.0


async def _relay_refusals(*, above: float) -> bool:
    return _refused_starts() > above
