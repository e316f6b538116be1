"""D1 (RELIABILITY.md §1): SIGKILL the worker process (Temporal worker + inbox relay) under load.

The worker runs as a real ``python worker.py`` child. While ~300 payments and refunds flow, it
is SIGKILLed twice at seeded moments (after a seeded number of webhooks settled, never after
all of them) and started again at once. Afterwards every acknowledged webhook must be final and
applied exactly once, and Temporal must show one completed workflow per webhook, none failed.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from pathlib import Path

import httpx
from temporalio.client import Client

from core.settings import Settings
from tests.faults.workload import (
    Sender,
    WorkerProcess,
    assert_exactly_once,
    assert_workflows_completed,
    build_workload,
    fault_point,
    in_background,
    settle,
)
from tests.support import add_partner, fresh_database, running_api, stores, wait_for

# Fixes the workload, the two kill points and the resent duplicates. Change it to explore.
SEED = 20261122
log = logging.getLogger(__name__)


async def test_worker_sigkilled_twice_mid_load_applies_every_webhook_exactly_once(
    postgres_admin_url: str, settings: Settings, temporal_client: Client, tmp_path: Path
) -> None:
    """Two worker SIGKILLs mid-load lose and double nothing: every acked webhook applies once."""
    rng = random.Random(SEED)
    settings = settings.model_copy(
        update={
            "database_url": await fresh_database(postgres_admin_url),
            "task_queue": f"tq-d1-{uuid.uuid4().hex[:8]}",
        }
    )
    workload = build_workload(SEED, payments=130, merchants=4, tag="d1")
    hooks = workload.webhooks
    total = len(hooks)
    marks: dict[str, float] = {}
    async with (
        running_api(settings) as api_url,
        httpx.AsyncClient(base_url=api_url, timeout=30) as http,
        stores(settings) as (pool, _),
    ):
        partner = await add_partner(pool, http)
        sender = Sender(partner)
        worker = WorkerProcess(settings, tmp_path)
        worker.start()
        try:
            await worker.wait_ready()
            began = time.monotonic()
            load = sender.send_chains(workload.chains, concurrency=8, accept=(202,))
            async with in_background(load) as sending:
                first = rng.randint(20, 80)
                for n, at_least in enumerate((first, first + rng.randint(40, 100)), start=1):
                    settled = await wait_for(
                        fault_point(pool, partner.id, at_least=at_least, total=total),
                        timeout=60,
                        interval=0.01,
                        what=f"{at_least} webhooks to settle before kill {n}",
                    )
                    await worker.kill()
                    marks[f"kill{n}"] = time.monotonic() - began
                    stranded = await pool.fetchval(
                        "SELECT count(*) FROM webhooks WHERE status = 'received'"
                        " AND relay_lease_until > clock_timestamp()"
                    )
                    log.info(
                        "kill %d with %d of %d settled; %d rows left under the dead relay's lease",
                        n,
                        settled,
                        total,
                        stranded,
                    )
                    worker.start()
                    await worker.wait_ready()
                    marks[f"restarted{n}"] = time.monotonic() - began
                await sending
            marks["all_sent"] = time.monotonic() - began
            # Partners retry: repeats after the kills answer 200 with the original event id.
            await sender.send_chains(
                [[hook] for hook in rng.sample(hooks, 20)], concurrency=4, accept=(200,)
            )
            await settle(pool, sender.acked.values(), timeout=75)
            marks["settled"] = time.monotonic() - began
            # Workflows finish after their rows (publish, then the completion reaches Temporal).
            await assert_workflows_completed(temporal_client, settings.task_queue, total)
            marks["completed"] = time.monotonic() - began
        finally:
            await worker.stop()
        log.info("D1 seed %d, %d webhooks, timeline %s", SEED, total, marks)
        assert worker.kills == 2
        assert sender.unexpected == []
        assert sender.statuses == {202: total, 200: 20}
        await assert_exactly_once(pool, partner.id, [workload], sender.acked)
