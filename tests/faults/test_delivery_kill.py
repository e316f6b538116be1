"""Outbound deliveries survive worker SIGKILLs (issue 3; RELIABILITY.md §1 D1 applied to W6).

The worker runs as a real ``python worker.py`` child (Temporal workers, inbox relay, delivery
relay). ~250 payments and refunds flow for four merchants, each with two endpoints on a real
stub merchant that answers a seeded 20 % of requests with 500/503 after a short seeded delay.
While deliveries are on the wire, the worker is SIGKILLed twice at seeded moments (after a
seeded number of deliveries succeeded, never after all of them) and started again at once.

Afterwards every (event, endpoint) pair has exactly one delivery, ``succeeded`` with exactly
one ``delivered`` attempt, and the receiver saw, for each pair, only verified requests carrying
one ``webhook-id`` (the delivery's id) and one body. A kill may repeat a send (at least once is
the contract; the receiver deduplicates on the id): the test logs how many it caused.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import httpx
from temporalio.client import Client

from core.outbox import delivery_id
from core.settings import Settings
from tests.faults.workload import (
    Sender,
    WorkerProcess,
    build_workload,
    delivery_fault_point,
    in_background,
    settle,
    settle_deliveries,
)
from tests.outbound.stub import Received, StubMerchant
from tests.support import add_partner, fresh_database, running_api, stores, wait_for

# Fixes the workload, the stub's failures and delays, and the two kill points.
SEED = 20261124
FAILURE_RATIO = 0.2
ADMIN = {"authorization": "Bearer sb_dev_admin_key"}
# What the child worker takes from the test's settings besides stores and task queue.
FORWARD = (
    "delivery_task_queue",
    "delivery_retry_schedule",
    "delivery_allow_networks",
    "circuit_failure_threshold",
)
log = logging.getLogger(__name__)


async def test_worker_sigkilled_twice_mid_delivery_reaches_every_endpoint_with_one_webhook_id(
    postgres_admin_url: str, settings: Settings, temporal_client: Client, tmp_path: Path
) -> None:
    """Two SIGKILLs amid 20 % failing deliveries lose none, and no pair gets a second id."""
    rng = random.Random(SEED)
    settings = settings.model_copy(
        update={
            "database_url": await fresh_database(postgres_admin_url),
            "task_queue": f"tq-dk-{uuid.uuid4().hex[:8]}",
            "delivery_task_queue": f"dq-dk-{uuid.uuid4().hex[:8]}",
            # Eight attempts a second or so apart: 0.2**8 makes exhaustion all but impossible.
            "delivery_retry_schedule": [0, 0.2, 0.5, 1, 1, 1, 1, 1],
            # This test measures kill-safety; a run of random failures must not open a circuit.
            "circuit_failure_threshold": 1000,
        }
    )
    workload = build_workload(SEED, payments=110, merchants=4, tag="dk")
    hooks = workload.webhooks
    merchants = sorted({payment.merchant_id for payment in workload.payments})
    total = 2 * len(hooks)  # every merchant has two endpoints subscribed to everything
    marks: dict[str, float] = {}
    stub = StubMerchant(failure_ratio=FAILURE_RATIO, latency=0.05, seed=SEED)
    async with (
        stub.running(),
        running_api(settings) as api_url,
        httpx.AsyncClient(base_url=api_url, timeout=30) as http,
        stores(settings) as (pool, _),
    ):
        endpoints: dict[str, list[str]] = {}  # merchant → endpoint ids
        paths: dict[str, str] = {}  # stub path → endpoint id
        for merchant in merchants:
            for leg in ("a", "b"):
                path = f"/{merchant}/{leg}"
                response = await http.post(
                    "/v1/endpoints",
                    json={"merchant_id": merchant, "url": f"{stub.url}{path}"},
                    headers=ADMIN,
                )
                assert response.status_code == 201, response.text
                endpoint = response.json()
                stub.secrets[path] = [endpoint["secret"]]
                endpoints.setdefault(merchant, []).append(endpoint["id"])
                paths[path] = endpoint["id"]
        partner = await add_partner(pool, http)
        sender = Sender(partner)
        worker = WorkerProcess(settings, tmp_path, forward=FORWARD)
        worker.start()
        try:
            await worker.wait_ready()
            began = time.monotonic()
            load = sender.send_chains(workload.chains, concurrency=8, accept=(202,))
            async with in_background(load) as sending:
                first = rng.randint(60, 160)
                for n, at_least in enumerate((first, first + rng.randint(100, 160)), start=1):
                    succeeded = await wait_for(
                        delivery_fault_point(
                            pool, at_least=at_least, total=total, sending=lambda: stub.in_flight
                        ),
                        timeout=60,
                        interval=0.01,
                        what=f"{at_least} deliveries to succeed before kill {n}",
                    )
                    on_the_wire = stub.in_flight
                    await worker.kill()
                    marks[f"kill{n}"] = time.monotonic() - began
                    log.info(
                        "kill %d with %d of %d deliveries succeeded, %d requests on the wire",
                        n,
                        succeeded,
                        total,
                        on_the_wire,
                    )
                    worker.start()
                    await worker.wait_ready()
                    marks[f"restarted{n}"] = time.monotonic() - began
                await sending
            marks["all_sent"] = time.monotonic() - began
            # Partners retry: repeats answer 200 and must not plan a second delivery.
            await sender.send_chains(
                [[hook] for hook in rng.sample(hooks, 20)], concurrency=4, accept=(200,)
            )
            await settle(pool, sender.acked.values(), timeout=90)
            marks["events_settled"] = time.monotonic() - began
            await settle_deliveries(pool, expected=total, timeout=90)
            marks["delivered"] = time.monotonic() - began
        finally:
            await worker.stop()
        assert worker.kills == 2
        assert sender.unexpected == []
        assert sender.statuses == {202: len(hooks), 200: 20}

        merchant_of = {hook.webhook_id: hook.merchant_id for hook in hooks}
        expected = {
            (event_id, endpoint_id)
            for webhook_id, event_id in sender.acked.items()
            for endpoint_id in endpoints[merchant_of[webhook_id]]
        }
        rows = await pool.fetch("SELECT id, event_id, endpoint_id, status FROM deliveries")
        deliveries = {(row["event_id"], row["endpoint_id"]): row["id"] for row in rows}
        assert len(deliveries) == len(rows) == total, "several deliveries for one pair"
        assert set(deliveries) == expected, "deliveries differ from (event, subscribed endpoint)"
        assert {row["status"] for row in rows} == {"succeeded"}
        underived = [i for (e, ep), i in deliveries.items() if i != delivery_id(e, ep)]
        assert underived == [], "delivery ids not derived from their event and endpoint"

        delivered = Counter(
            {
                row["delivery_id"]: row["n"]
                for row in await pool.fetch(
                    "SELECT delivery_id, count(*) FILTER (WHERE outcome = 'delivered') AS n"
                    " FROM delivery_attempts GROUP BY delivery_id"
                )
            }
        )
        assert {i: n for i, n in delivered.items() if n != 1} == {}, "delivered twice in the log"
        assert set(delivered) == set(deliveries.values()), "deliveries without a logged attempt"
        logged = await pool.fetchval("SELECT count(*) FROM delivery_attempts")

        seen: defaultdict[tuple[str, str], list[Received]] = defaultdict(list)
        for request in stub.received:
            event_id = json.loads(request.body)["data"]["event_id"]
            seen[event_id, paths[request.path]].append(request)
        assert set(seen) == expected, "the receiver's (event, endpoint) pairs differ from the plan"
        unverified = [r.webhook_id for r in stub.received if not r.verified_with]
        assert unverified == [], f"{len(unverified)} requests failed standardwebhooks verification"
        ids = {pair: {r.webhook_id for r in requests} for pair, requests in seen.items()}
        assert {p: i for p, i in ids.items() if i != {deliveries[p]}} == {}, (
            "a pair reached the receiver under another or a second webhook-id"
        )
        bodies = {pair: {r.body for r in requests} for pair, requests in seen.items()}
        assert {p for p, b in bodies.items() if len(b) != 1} == set(), "a pair's body changed"
        requests = len(stub.received)
        assert requests <= 3 * total, f"{requests} requests for {total} deliveries"

        answered_2xx = Counter(pair for pair, rs in seen.items() for r in rs if r.status < 300)
        repeats = sum(n - 1 for n in answered_2xx.values() if n > 1)
        failures = sum(1 for r in stub.received if r.status >= 300)
        log.info(
            "delivery kill seed %d: %d events, %d deliveries, %d requests (%d answered 500/503);"
            " %d sends never logged (lost with a killed worker, then repeated); %d pairs"
            " answered 2xx more than once (%d duplicate deliveries, same webhook-id);"
            " timeline %s",
            SEED,
            len(hooks),
            total,
            requests,
            failures,
            requests - logged,
            sum(1 for n in answered_2xx.values() if n > 1),
            repeats,
            marks,
        )
