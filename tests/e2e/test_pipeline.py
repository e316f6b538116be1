"""End to end: signed webhook → inbox → relay → workflow → ledger → Redis, on real servers."""

from __future__ import annotations

import json
import uuid

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from temporalio.client import Client

from core.contracts import merchant_channel
from tests.support import Partner, wait_for, wait_settled

pytestmark = pytest.mark.usefixtures("pipeline")


async def test_payment_is_recorded_applied_and_published(
    partner: Partner, pool: asyncpg.Pool, redis: Redis, http: httpx.AsyncClient
) -> None:
    """A payment webhook gets 202, becomes a payment row, a merchant event and a Redis message."""
    merchant = f"m-{uuid.uuid4().hex[:8]}"
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(merchant_channel(merchant))
        response = await partner.post(
            partner.envelope(
                "payment.succeeded",
                payment_id="pay_1",
                merchant_id=merchant,
                amount=1250,
                currency="EUR",
            )
        )
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert accepted["duplicate"] is False
        event_id = accepted["event_id"]
        message = await wait_for(
            lambda: pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1),
            what="the published event",
        )
    published = json.loads(message["data"])
    assert published["event_id"] == event_id
    assert published["seq"] == 1
    assert published["data"]["amount"] == 1250
    assert (await wait_settled(pool, [event_id]))[event_id] == "processed"
    payment = await pool.fetchrow(
        "SELECT status, amount, currency FROM payments WHERE partner_id = $1", partner.id
    )
    assert payment is not None
    assert dict(payment) == {"status": "succeeded", "amount": 1250, "currency": "EUR"}


async def test_trace_shows_every_step_and_a_workflow_link(
    partner: Partner, pool: asyncpg.Pool, http: httpx.AsyncClient, temporal_client: Client
) -> None:
    """The operator trace lists received → recorded → started → applied → published."""
    event_id = await partner.send(
        "payment.succeeded", payment_id="pay_t", merchant_id="m-trace", amount=5, currency="USD"
    )
    await wait_settled(pool, [event_id])
    await wait_for(
        lambda: pool.fetchval(
            "SELECT published_at IS NOT NULL FROM webhooks WHERE event_id = $1", event_id
        ),
        what="publication",
    )
    response = await http.get(
        f"/v1/webhooks/{event_id}", headers={"authorization": "Bearer sb_dev_admin_key"}
    )
    assert response.status_code == 200, response.text
    trace = response.json()
    steps = [step["step"] for step in trace["steps"]]
    assert steps[:3] == ["received", "recorded", "workflow_started"]
    assert "payment new → succeeded" in steps
    assert steps[-1] == "published"
    assert trace["workflow_id"] == f"webhook:{partner.id}:{trace['webhook_id']}"
    assert trace["workflow_url"].endswith(f"/workflows/{trace['workflow_id']}")
    description = await temporal_client.get_workflow_handle(trace["workflow_id"]).describe()
    assert description.search_attributes.get("PartnerId") == [partner.id]
