"""Record one history per path through :class:`WebhookWorkflow`, :class:`DeliveryLaneWorkflow`,
:class:`EscrowWorkflow` and :class:`EscalationWorkflow` into ``tests/histories/``.

Run ``./run python -m tests.histories.record`` (or ``… record escrows`` for the escrow histories
alone) after changing a workflow *on purpose* (and then guard old runs with ``workflow.patched``,
see the README here); ``tests/workflows/test_replay.py`` replays these files with the current
code so an accidental non-deterministic change fails CI.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import uuid
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from temporalio.client import Client

from core.audit import raise_alert, resolve_alert
from core.contracts import (
    SEARCH_ATTRIBUTES,
    delivery_lane_workflow_id,
    escalation_workflow_id,
    escrow_workflow_id,
    webhook_workflow_id,
)
from core.settings import PAGERDUTY_SINK_PATH, SLACK_SINK_PATH, Settings
from devstack.oncall_sink import OncallSink
from devstack.payout_sink import PayoutSink
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from devstack.redis import EmbeddedRedis
from devstack.temporal import TemporalDevServer
from tests.escrow.support import escrow_body, keyed, wallets
from tests.oncall.support import ADMIN, TEST_CRITICAL
from tests.outbound.stub import Answer, StubMerchant
from tests.support import (
    Partner,
    add_partner,
    fresh_database,
    running_api,
    running_worker,
    stores,
    wait_for,
)
from workflows.escalation import EscalationWorkflow

HERE = Path(__file__).parent
log = logging.getLogger("record")


GROUPS = ("webhooks", "escrows", "escalations")
FLAPS = 1_200
FLAP_BURST = 50


async def record(scratch: Path, groups: tuple[str, ...] = GROUPS) -> None:
    with (
        PayoutSink(free_port()) as payout_sink,
        OncallSink(free_port()) as oncall_sink,
        EmbeddedPostgres(scratch / "pg", free_port()) as postgres,
        EmbeddedRedis(scratch / "redis", free_port()) as redis_server,
        TemporalDevServer(
            None,
            free_port(),
            ui_port=None,
            search_attributes=[key.name for key in SEARCH_ATTRIBUTES],
        ) as temporal,
    ):
        settings = Settings(
            environment="test",
            database_url=await fresh_database(postgres.url),
            redis_url=redis_server.url,
            temporal_address=temporal.address,
            task_queue=f"record-{uuid.uuid4().hex[:6]}",
            dependency_window_seconds=2.0,
            delivery_task_queue=f"record-dq-{uuid.uuid4().hex[:6]}",
            delivery_allow_networks="127.0.0.1/32",
            delivery_retry_schedule=[0, 0.2, 0.2],
            payout_base_url=payout_sink.url,
            slack_base_url=f"{oncall_sink.url}{SLACK_SINK_PATH}",
            pagerduty_base_url=f"{oncall_sink.url}{PAGERDUTY_SINK_PATH}",
        )
        client = await Client.connect(temporal.address)
        async with (
            stores(settings) as (pool, redis),
            running_api(settings) as api_url,
            httpx.AsyncClient(base_url=api_url) as http,
            running_worker(settings, client, pool, redis),
            StubMerchant().running() as stub,
        ):
            scenarios: dict[str, str] = {}
            if "escrows" in groups:
                scenarios.update(await record_escrows(pool, http, payout_sink))
            if "webhooks" in groups:
                scenarios.update(await record_webhooks(pool, http, stub))
            if "escalations" in groups:
                scenarios.update(await record_escalations(pool, http, client))
            for name, workflow_id in scenarios.items():
                handle = client.get_workflow_handle(workflow_id)
                outcome = await asyncio.wait_for(handle.result(), timeout=60)
                history = await handle.fetch_history()
                (HERE / f"{name}.json").write_text(history.to_json())
                log.warning("%s: %s, %d events", name, outcome, len(history.events))


async def record_webhooks(
    pool: asyncpg.Pool, http: httpx.AsyncClient, stub: StubMerchant
) -> dict[str, str]:
    """Webhooks applied, woken, parked, dead-lettered and ignored; then delivery lanes."""
    partner = await add_partner(pool, http)
    common = {"merchant_id": "m_rec", "currency": "EUR"}

    async def send(name: str, event_type: str, **data: object) -> str:
        body = partner.envelope(event_type, **common, **data)
        response = await partner.post(body, webhook_id=f"msg_{name}")
        assert response.status_code == 202, response.text
        return webhook_workflow_id(partner.id, f"msg_{name}")

    scenarios = {
        "refund_waits_then_woken": await send(
            "refund_first", "refund.succeeded", refund_id="r1", payment_id="p1", amount=1
        ),
    }

    async def refund_waiting() -> bool:
        return bool(await pool.fetchval("SELECT 1 FROM webhooks WHERE status = 'waiting'"))

    await wait_for(refund_waiting, what="the refund to wait")
    scenarios["payment_applied_wakes_refund"] = await send(
        "payment", "payment.succeeded", payment_id="p1", amount=10
    )
    scenarios["refund_parked_after_window"] = await send(
        "orphan", "refund.succeeded", refund_id="r2", payment_id="p_none", amount=1
    )
    scenarios["refund_exceeding_dead_lettered"] = await send(
        "too_much", "refund.succeeded", refund_id="r3", payment_id="p1", amount=100
    )
    scenarios["payment_applied_and_published"] = await send(
        "plain", "payment.succeeded", payment_id="p2", amount=10
    )
    scenarios["unknown_type_ignored"] = await send("unknown", "dispute.created", x=1)
    scenarios.update(await record_lanes(pool, http, partner, stub))
    return scenarios


async def record_lanes(
    pool: asyncpg.Pool, http: httpx.AsyncClient, partner: Partner, stub: StubMerchant
) -> dict[str, str]:
    """Delivery lanes: retried then delivered, delivered at once, exhausted."""
    admin = {"authorization": "Bearer sb_dev_admin_key"}
    common = {"merchant_id": "m_out", "currency": "EUR"}
    lanes = {}
    for name, path, answers in (
        ("lane_retried_then_delivered", "/retry", [Answer(500)]),
        ("lane_delivered_at_once", "/ordered", []),
        ("lane_exhausted_dead_lettered", "/down", [Answer(500)] * 3),
    ):
        created = await http.post(
            "/v1/endpoints",
            json={"merchant_id": common["merchant_id"], "url": stub.url + path},
            headers=admin,
        )
        endpoint_id = created.json()["id"]
        stub.script(path, *answers)
        payment_id = f"p_{name}"
        event_id = await partner.send(
            "payment.succeeded", payment_id=payment_id, amount=10, **common
        )
        if name == "lane_delivered_at_once":
            await partner.send(
                "refund.succeeded", refund_id="r_lane", payment_id=payment_id, amount=1, **common
            )
        lane: str = await wait_for(
            partial(
                pool.fetchval,
                "SELECT lane FROM deliveries WHERE endpoint_id = $1 AND event_id = $2",
                endpoint_id,
                event_id,
            ),
            what=f"{name}'s delivery",
        )
        await wait_for(
            partial(
                pool.fetchval,
                "SELECT bool_and(status <> 'pending') FROM deliveries WHERE endpoint_id = $1",
                endpoint_id,
            ),
            what=f"{name}'s deliveries to finish",
        )
        lanes[name] = delivery_lane_workflow_id(lane)
        # Others of this merchant's endpoints must not get this lane's next events.
        await http.delete(f"/v1/endpoints/{endpoint_id}", headers=admin)
    return lanes


async def record_escrows(
    pool: asyncpg.Pool, http: httpx.AsyncClient, payout_sink: PayoutSink
) -> dict[str, str]:
    """Escrows released to a wallet; failed funding compensated; an external release refused,
    held, then refunded; expired and refunded on the saga's own timer."""
    merchant, (first, second, poor, winner) = await wallets(http, pool, [60, 40, 5, 0])

    async def create(name: str, body: dict[str, Any], status: str) -> str:
        created = await http.post("/v1/escrows", json=body, headers=keyed(f"record:{name}"))
        assert created.is_success, created.text
        escrow_id: str = created.json()["id"]
        await wait_for(
            partial(_is, pool, escrow_id, status), what=f"{name} to be {status}", timeout=30
        )
        return escrow_id

    async def order(name: str, escrow_id: str, action: str, status: str) -> None:
        response = await http.post(
            f"/v1/escrows/{escrow_id}/{action}", json={}, headers=keyed(f"record:{name}:{action}")
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == status, response.text

    released = await create(
        "escrow_released_to_wallet",
        escrow_body(merchant, [(first, 20), (second, 10)], wallet=winner),
        "funded",
    )
    await order("escrow_released_to_wallet", released, "release", "released")
    failed = await create(
        "escrow_funding_failed_compensated",
        escrow_body(merchant, [(first, 10), (poor, 50)], wallet=winner),
        "failed",
    )
    account = f"acct_{uuid.uuid4().hex[:8]}"
    payout_sink.refuse(account)
    refused = await create(
        "escrow_release_refused_then_refunded",
        escrow_body(merchant, [(second, 10)], account=account),
        "funded",
    )
    await order("escrow_release_refused_then_refunded", refused, "release", "release_failed")
    await order("escrow_release_refused_then_refunded", refused, "refund", "refunded")
    expired = await create(
        "escrow_expired_refunded",
        escrow_body(merchant, [(first, 5)], wallet=winner, expires_in=timedelta(seconds=3)),
        "funded",
    )
    await wait_for(partial(_is, pool, expired, "refunded"), what="the expiry", timeout=30)
    return {
        "escrow_released_to_wallet": escrow_workflow_id(released),
        "escrow_funding_failed_compensated": escrow_workflow_id(failed),
        "escrow_release_refused_then_refunded": escrow_workflow_id(refused),
        "escrow_expired_refunded": escrow_workflow_id(expired),
    }


async def record_escalations(
    pool: asyncpg.Pool, http: httpx.AsyncClient, client: Client
) -> dict[str, str]:
    """Escalations (the default policy's critical route: Slack at once): acknowledged then
    resolved by an operator; resolved by themselves once their alert cleared; and one whose
    alert flapped ``FLAPS`` times before an operator resolved it. Its committed history, past
    :data:`workflows.escalation.HISTORY_BOUND` events in one run, was recorded before
    escalations continued as new (see the README); recorded now, it continues as new and the
    file holds only its last run."""

    async def opened(key: str) -> tuple[int, str]:
        async with pool.acquire() as conn, conn.transaction():
            await raise_alert(
                conn, TEST_CRITICAL, dedup_key=f"record:{key}", summary=key, details={}
            )
        alert_id: int = await pool.fetchval(
            "SELECT id FROM alerts WHERE dedup_key = $1", f"record:{key}"
        )
        group_id: str = await wait_for(
            partial(pool.fetchval, "SELECT group_id FROM alerts WHERE id = $1", alert_id),
            what=f"{key} to be routed",
        )
        await wait_for(
            partial(
                pool.fetchval,
                "SELECT 1 FROM alert_timeline WHERE group_id = $1 AND action = 'notified'",
                group_id,
            ),
            what=f"{key}'s first notification",
        )
        return alert_id, group_id

    async def act(alert_id: int, action: str) -> None:
        response = await http.post(
            f"/v1/alerts/{alert_id}/{action}", json={"reason": "recorded"}, headers=ADMIN
        )
        assert response.status_code == 200, response.text

    async def resolved(group_id: str) -> None:
        """All three alerts are of one kind, grouped by kind: each needs a group of its own."""
        await wait_for(
            partial(
                pool.fetchval,
                "SELECT status = 'resolved' FROM alert_groups WHERE id = $1",
                group_id,
            ),
            what=f"group {group_id} to be resolved",
        )

    acked, acked_group = await opened("acked")
    await act(acked, "acknowledge")
    await wait_for(
        partial(
            pool.fetchval,
            "SELECT 1 FROM alert_timeline WHERE group_id = $1 AND action = 'acknowledged'"
            " AND channel IS NOT NULL",
            acked_group,
        ),
        what="the acknowledgement to be posted",
    )
    await act(acked, "resolve")
    await resolved(acked_group)
    _, cleared_group = await opened("cleared")
    async with pool.acquire() as conn:
        assert await resolve_alert(conn, "record:cleared", reason="recorded")
    await resolved(cleared_group)
    flapping, flapping_group = await opened("flapping")
    handle = client.get_workflow_handle(escalation_workflow_id(flapping_group))
    for _ in range(FLAPS // FLAP_BURST):
        await asyncio.gather(
            *(handle.signal(EscalationWorkflow.alerts_changed) for _ in range(FLAP_BURST))
        )
    await act(flapping, "resolve")
    return {
        "escalation_acknowledged_then_resolved": escalation_workflow_id(acked_group),
        "escalation_cleared_by_itself": escalation_workflow_id(cleared_group),
        "escalation_flapping_then_resolved": escalation_workflow_id(flapping_group),
    }


async def _is(pool: asyncpg.Pool, escrow_id: str, status: str) -> bool:
    return bool(
        await pool.fetchval("SELECT status = $2 FROM escrows WHERE id = $1", escrow_id, status)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("groups", nargs="*", choices=GROUPS, help="what to record (default: all)")
    groups = tuple(parser.parse_args().groups) or GROUPS
    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(record(Path(scratch), groups))


if __name__ == "__main__":
    main()
