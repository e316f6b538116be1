"""D3 (RELIABILITY.md §1): SIGKILL Postgres under load, probe the ingress while it is down, restart.

A Postgres server of its own (embedded, free port, temp dir) backs the api (in-process) and the
worker with its relay (a real ``python worker.py`` child with its own pool). Postgres is killed
while workflows are applying. While it is down, every webhook must be refused with 503 +
``Retry-After`` as problem+json (never a 2xx, never a 500), for longer than the api's partner
cache lives. After the restart the pools must recover on their own: new webhooks are accepted
again, and everything acknowledged before the outage applies exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from pathlib import Path

import httpx
from temporalio.client import Client

from core.db import migrate
from core.settings import Settings
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from tests.faults.workload import (
    Sender,
    Webhook,
    WorkerProcess,
    assert_exactly_once,
    assert_workflows_completed,
    build_workload,
    fault_point,
    settle,
)
from tests.support import add_partner, running_api, stores, wait_for

# Fixes both workloads and the kill point. Change it to explore.
SEED = 5432
# Longer than the api's partner cache (5 s), so lookups during the outage reach Postgres too.
OUTAGE_SECONDS = 7.0
MAX_OUTAGE_PROBES = 300
log = logging.getLogger(__name__)


class OutageAnswerError(AssertionError):
    """The ingress answered something other than a 503 problem while Postgres was down."""


def _refusal_problem(response: httpx.Response) -> str | None:
    """Why ``response`` is not a proper "cannot record now" refusal, or None if it is one."""
    if response.status_code != 503:
        return f"status {response.status_code}: {response.text[:160]!r}"
    retry_after = response.headers.get("retry-after", "")
    if not retry_after.isdigit() or int(retry_after) < 1:
        return f"503 without a usable Retry-After ({retry_after!r})"
    if response.headers.get("content-type", "").split(";")[0] != "application/problem+json":
        return f"503 as {response.headers.get('content-type')!r}, not problem+json"
    if response.json().get("status") != 503:
        return f"503 problem with body {response.text[:160]!r}"
    return None


async def test_postgres_killed_mid_apply_refuses_with_503_then_recovers_exactly_once(
    settings: Settings, temporal_client: Client, tmp_path: Path
) -> None:
    """Postgres down: ingress answers 503 problems; once back, every acked webhook applies once."""
    rng = random.Random(SEED)
    before = build_workload(SEED, payments=80, merchants=4, tag="d3a")
    after = build_workload(SEED + 1, payments=40, merchants=4, tag="d3b")
    postgres = EmbeddedPostgres(tmp_path / "pg", free_port())
    await asyncio.to_thread(postgres.start)
    marks: dict[str, float] = {}
    try:
        await asyncio.to_thread(migrate, postgres.url)
        settings = settings.model_copy(
            update={"database_url": postgres.url, "task_queue": f"tq-d3-{uuid.uuid4().hex[:8]}"}
        )
        async with (
            running_api(settings) as api_url,
            httpx.AsyncClient(base_url=api_url, timeout=30) as http,
            stores(settings) as (pool, _),
        ):
            partner = await add_partner(pool, http)
            sender = Sender(partner)
            # The worker and relay run as their own process, with their own pool, as deployed.
            worker = WorkerProcess(settings, tmp_path)
            worker.start()
            try:
                await worker.wait_ready()
                began = time.monotonic()
                await sender.send_chains(before.chains, concurrency=8, accept=(202,))
                acked_before = dict(sender.acked)
                marks["sent"] = time.monotonic() - began
                at_least = rng.randint(10, 60)
                settled = await wait_for(
                    fault_point(pool, partner.id, at_least=at_least, total=len(before.webhooks)),
                    timeout=60,
                    interval=0.01,
                    what=f"{at_least} webhooks to settle before the kill",
                )
                await asyncio.to_thread(postgres.kill)
                killed = time.monotonic()
                marks["killed"] = killed - began
                log.info("Postgres killed with %d webhooks settled", settled)

                # The outage: keep sending new webhooks (one at a time, as a partner would).
                pending: list[Webhook] = after.webhooks
                refusals: list[str] = []
                probes = 0

                async def probe_outage() -> bool:
                    nonlocal probes
                    hook = pending[probes % len(pending)]
                    probes += 1
                    response = await sender.post(hook)
                    if (problem := _refusal_problem(response)) is not None:
                        refusals.append(f"after {time.monotonic() - killed:.1f}s: {problem}")
                    return (
                        probes >= MAX_OUTAGE_PROBES or time.monotonic() - killed >= OUTAGE_SECONDS
                    )

                await wait_for(probe_outage, timeout=OUTAGE_SECONDS + 30, interval=0.05)
                assert not postgres.running
                marks["outage_probed"] = time.monotonic() - began
                outage_statuses = dict(sender.statuses)

                await asyncio.to_thread(postgres.start)
                marks["restarted"] = time.monotonic() - began
                # The pools must reconnect by themselves: the same webhook is retried until it
                # is accepted (a 503 in between is a fair answer, anything else is not).
                first = pending[0]
                retries: list[int] = []

                async def accepted_again() -> bool:
                    response = await sender.post(first)
                    retries.append(response.status_code)
                    return response.is_success

                await wait_for(accepted_again, timeout=30, interval=0.1, what="a 2xx again")
                marks["accepting"] = time.monotonic() - began
                await sender.send_chains(after.chains, concurrency=8, accept=(200, 202))
                await settle(pool, sender.acked.values(), timeout=90)
                marks["settled"] = time.monotonic() - began
                # Workflows finish after their rows (publish, then the completion reaches Temporal).
                total = len(before.webhooks) + len(after.webhooks)
                await assert_workflows_completed(temporal_client, settings.task_queue, total)
                marks["completed"] = time.monotonic() - began
            finally:
                await worker.stop()
            log.info(
                "D3 seed %d: %d probes during the outage %s, then %s before a 2xx; timeline %s",
                SEED,
                probes,
                outage_statuses,
                retries,
                marks,
            )
            assert sender.unexpected == []
            assert set(retries) <= {503, 200, 202}, retries
            assert {k: v for k, v in acked_before.items() if sender.acked[k] != v} == {}
            await assert_exactly_once(pool, partner.id, [before, after], sender.acked)
            if refusals:
                raise OutageAnswerError(
                    f"{len(refusals)} of {probes} answers during the outage were wrong, first:"
                    f" {refusals[:3]}"
                )
    finally:
        await asyncio.to_thread(postgres.stop)
