"""Exchange requests live through the api and the gateway: a claim reaches the operators' desk
and the request's own watcher, in seq order, within 100 ms of its commit; so does a release by
the request's workflow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import asyncpg
import httpx
import pytest_asyncio
from redis.asyncio import Redis
from temporalio.testing import ActivityEnvironment

from activities.exchange import ExchangeActivities
from core import exchange
from core.contracts import ExchangeTimerInput
from core.feeds import Topic
from core.settings import Settings
from devstack.ports import free_port
from gateway.server import Gateway
from tests.gateway.support import (
    Recorder,
    add_exchange_request,
    add_merchant,
    running_gateway,
    topic_head,
    topic_token,
    ws_url,
)
from tests.support import running_api


@pytest_asyncio.fixture
async def api(gw_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The api on the gateway tests' database, with the admin key."""
    settings = gw_settings.model_copy(
        update={"gateway_public_url": f"ws://127.0.0.1:{free_port()}"}
    )
    async with running_api(settings) as api_url:
        headers = {"authorization": f"Bearer {settings.admin_api_key.get_secret_value()}"}
        async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=10) as http:
            yield http


async def test_a_claim_reaches_the_desk_and_the_requests_watcher_in_order(
    api: httpx.AsyncClient, gw_settings: Settings, gw_pool: asyncpg.Pool
) -> None:
    """Through the api: tokens for the desk and one request, a create and a claim; both
    watchers get the claim live within 100 ms of its commit, with seqs continuing from the
    create's (the request's own feed: 1 created, 2 pending, 3 assigned)."""
    merchant = await add_merchant(gw_pool)
    async with running_gateway(gw_settings, gw_pool) as gateway:
        desk = (await api.post("/v1/exchange-desk/dashboard-tokens")).json()
        assert desk["topic"] == "desk" and desk["merchant_id"] is None
        desk_head = await topic_head(gw_pool, Topic.desk())
        desk_client = Recorder(ws_url(gateway.port), desk["token"], since_seq=desk_head)
        await desk_client.start()
        await desk_client.wait_live()
        created = await api.post(
            "/v1/exchange-requests",
            json={
                "merchant_id": merchant,
                "customer_id": "c-1",
                "from_amount": 25_000,
                "from_currency": "EUR",
                "to_currency": "BTC",
            },
            headers={"Idempotency-Key": merchant},
        )
        assert created.status_code == 201, created.text
        request_id = created.json()["id"]
        await desk_client.wait_seq(desk_head + 2)
        issued = await api.post(f"/v1/exchange-requests/{request_id}/dashboard-tokens")
        assert issued.status_code == 201, issued.text
        assert issued.json()["topic"] == f"request:{request_id}"
        missing = await api.post(f"/v1/exchange-requests/exr_{'0' * 32}/dashboard-tokens")
        assert missing.status_code == 404
        watcher = Recorder(ws_url(gateway.port), issued.json()["token"], since_seq=0)
        await watcher.start()
        await watcher.wait_seq(2)
        await watcher.wait_live()
        claim = await api.post(f"/v1/exchange-requests/{request_id}/claim")
        assert claim.status_code == 200, claim.text
        await watcher.wait_seq(3)
        await desk_client.wait_seq(desk_head + 3)
        for client in (watcher, desk_client):
            await client.stop()
    watcher.assert_gapless(1, 3)
    desk_client.assert_gapless(desk_head + 1, desk_head + 3)
    assert [e["type"] for e in watcher.events] == [
        "exchange_request.created",
        "exchange_request.pending",
        "exchange_request.assigned",
    ]
    claimed = desk_client.events[-1]
    assert claimed["type"] == "exchange_request.assigned"
    assert claimed["data"]["from"] == "pending" and claimed["data"]["to"] == "assigned"
    assert claimed["data"]["request"]["assignee"] == claimed["data"]["actor"]
    assert claimed["event_id"] == watcher.events[-1]["event_id"]
    assert "assignee" not in watcher.events[-1]["data"]["request"]
    for client in (watcher, desk_client):
        committed = datetime.fromisoformat(client.events[-1]["occurred_at"]).timestamp()
        assert client.received_at[-1] - committed < 0.1


async def test_a_timer_release_reaches_the_watchers(
    gateway: Gateway, gw_settings: Settings, gw_pool: asyncpg.Pool, gw_redis: Redis
) -> None:
    """The workflow's idle-assignment release (an activity, not the api) publishes too: the
    request's watcher sees it go back to pending right after the claim, in seq order."""
    merchant = await add_merchant(gw_pool)
    created = await add_exchange_request(gw_pool, merchant)
    async with gw_pool.acquire() as conn:
        claimed = await exchange.claim(conn, created["id"], actor=exchange.Actor("op"))
    topic = Topic.request(created["id"])
    watcher = Recorder(ws_url(gateway.port), topic_token(gw_settings, topic), since_seq=0)
    await watcher.start()
    await watcher.wait_seq(3)  # created, pending, assigned: replayed from Postgres
    await watcher.wait_live()
    activities = ExchangeActivities(gw_pool, gw_redis)
    timer = ExchangeTimerInput(created["id"], claimed["version"], after_seconds=60)
    result = await ActivityEnvironment().run(activities.release_idle, timer)
    assert result.acted
    await watcher.wait_seq(4, timeout=5)
    await watcher.stop()
    watcher.assert_gapless(1, 4)
    released = watcher.events[-1]
    assert released["type"] == "exchange_request.pending"
    assert released["data"]["from"] == "assigned"
