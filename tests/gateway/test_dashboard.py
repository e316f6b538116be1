"""The api's side of the dashboard (tokens, sync) and the page itself in a real headless Chromium:
live events, a gateway restart without losing one, and nothing of another merchant."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest_asyncio
from redis.asyncio import Redis

from core.settings import Settings
from devstack.ports import free_port
from gateway.server import Gateway
from tests.gateway.support import (
    Recorder,
    add_merchant,
    append_events,
    running_gateway,
    signed_in_page,
    token_for,
)
from tests.support import running_api


@dataclass
class Stack:
    api_url: str
    api_settings: Settings
    gateway_settings: Settings
    gateway_port: int
    http: httpx.AsyncClient


@pytest_asyncio.fixture
async def stack(gw_settings: Settings) -> AsyncIterator[Stack]:
    """The api (serving the page) and settings for a gateway that trusts the api's origin."""
    gateway_port = free_port()
    api_settings = gw_settings.model_copy(
        update={"gateway_public_url": f"ws://127.0.0.1:{gateway_port}"}
    )
    async with running_api(api_settings) as api_url:
        gateway_settings = api_settings.model_copy(update={"gateway_allowed_origins": [api_url]})
        headers = {"authorization": f"Bearer {gw_settings.admin_api_key.get_secret_value()}"}
        async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=10) as http:
            yield Stack(api_url, api_settings, gateway_settings, gateway_port, http)


async def test_dashboard_tokens_are_issued_to_read_keys_for_known_merchants(
    stack: Stack, gw_pool: asyncpg.Pool
) -> None:
    """A read key gets a token naming the gateway; no key is 401, an unknown merchant 404."""
    merchant = await add_merchant(gw_pool)
    response = await stack.http.post(f"/v1/merchants/{merchant}/dashboard-tokens")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["merchant_id"] == merchant
    assert body["gateway_url"] == f"ws://127.0.0.1:{stack.gateway_port}/ws"
    async with running_gateway(stack.gateway_settings, gw_pool, stack.gateway_port):
        client = await Recorder(body["gateway_url"], body["token"], origin=None).start()
        await client.wait_live()
        await client.stop()
    anonymous = await stack.http.post(
        f"/v1/merchants/{merchant}/dashboard-tokens", headers={"authorization": ""}
    )
    assert anonymous.status_code == 401
    assert (await stack.http.post("/v1/merchants/nobody/dashboard-tokens")).status_code == 404


async def test_sync_returns_a_consistent_snapshot_and_pages(
    stack: Stack, gw_pool: asyncpg.Pool
) -> None:
    """Sync answers head_seq with the events up to it, pages after since_seq, and accepts the
    merchant's own dashboard token but not another merchant's."""
    merchant, other = await add_merchant(gw_pool), await add_merchant(gw_pool)
    await append_events(gw_pool, None, merchant, 30)
    latest = (await stack.http.get(f"/v1/merchants/{merchant}/sync", params={"limit": 10})).json()
    assert latest["head_seq"] == 30
    assert [e["seq"] for e in latest["events"]] == list(range(21, 31))
    assert latest["has_more"] is False
    page = (
        await stack.http.get(f"/v1/merchants/{merchant}/sync", params={"since_seq": 5, "limit": 10})
    ).json()
    assert [e["seq"] for e in page["events"]] == list(range(6, 16)) and page["has_more"] is True
    own = {"authorization": f"Bearer {token_for(stack.api_settings, merchant)}"}
    assert (await stack.http.get(f"/v1/merchants/{merchant}/sync", headers=own)).status_code == 200
    assert (await stack.http.get(f"/v1/merchants/{other}/sync", headers=own)).status_code == 403
    stale = token_for(stack.api_settings, merchant, ttl=60, now=time.time() - 120)
    expired = {"authorization": f"Bearer {stale}"}
    assert (
        await stack.http.get(f"/v1/merchants/{merchant}/sync", headers=expired)
    ).status_code == 401


async def test_the_page_streams_live_survives_a_gateway_restart_and_shows_one_merchant(
    stack: Stack, gw_pool: asyncpg.Pool, gw_redis: Redis, chromium: str
) -> None:
    """In headless Chromium: live events appear, a gateway restart loses none (the page resumes
    from its last seq), and another merchant's events never show."""

    merchant, other = await add_merchant(gw_pool), await add_merchant(gw_pool)
    await append_events(gw_pool, gw_redis, merchant, 5)  # history the page loads through sync
    async with contextlib.AsyncExitStack() as exits:
        gateway: Gateway = await exits.enter_async_context(
            running_gateway(stack.gateway_settings, gw_pool, stack.gateway_port)
        )
        page, errors = await signed_in_page(
            exits, chromium, stack.api_url, stack.api_settings, merchant
        )
        assert await page.evaluate("window.switchboard.seqs()") == [1, 2, 3, 4, 5]

        await append_events(gw_pool, gw_redis, merchant, 40)
        await append_events(gw_pool, gw_redis, other, 40)
        await page.wait_for_function("() => window.switchboard.lastSeq() === 45", timeout=10_000)
        # Rows are drawn on the next animation frame, which a loaded machine can delay.
        await page.wait_for_function(
            "() => document.querySelectorAll('#events tr').length >= 45", timeout=10_000
        )
        assert await page.locator("#events tr").count() == 45

        await gateway.stop()  # closes with 1012; the page reconnects with backoff
        await page.wait_for_function(
            "() => window.switchboard.connState() !== 'live'", timeout=10_000
        )
        await append_events(gw_pool, gw_redis, merchant, 30)  # published while no gateway runs
        await append_events(gw_pool, gw_redis, other, 30)
        await exits.enter_async_context(
            running_gateway(stack.gateway_settings, gw_pool, stack.gateway_port)
        )
        await page.wait_for_function(
            "() => window.switchboard.connState() === 'live'", timeout=20_000
        )
        await append_events(gw_pool, gw_redis, merchant, 25)
        await page.wait_for_function("() => window.switchboard.lastSeq() === 100", timeout=10_000)

        assert await page.evaluate("window.switchboard.seqs()") == list(range(1, 101))
        assert await page.evaluate("window.switchboard.merchants()") == [merchant]
        await page.wait_for_function(
            "() => document.querySelectorAll('#events tr').length >= 100", timeout=10_000
        )
        rows = page.locator("#events tr")
        assert await rows.count() == 100
        assert await page.locator(f"#events tr[data-merchant='{other}']").count() == 0
        assert other not in await page.locator("#merchant-view").inner_html()
        assert await rows.first.get_attribute("data-seq") == "100", "newest first"
        assert errors == []


async def test_the_page_reloads_through_sync_when_too_far_behind_to_resume(
    stack: Stack, gw_pool: asyncpg.Pool, gw_redis: Redis, chromium: str
) -> None:
    """In headless Chromium: back after missing more events than the gateway replays, the page
    is closed with 3010, reloads its state through sync, and goes live from its head_seq."""

    settings = stack.gateway_settings.model_copy(update={"gateway_max_replay_events": 20})
    merchant = await add_merchant(gw_pool)
    await append_events(gw_pool, gw_redis, merchant, 5)
    async with contextlib.AsyncExitStack() as exits:
        gateway: Gateway = await exits.enter_async_context(
            running_gateway(settings, gw_pool, stack.gateway_port)
        )
        page, errors = await signed_in_page(
            exits, chromium, stack.api_url, stack.api_settings, merchant
        )
        assert await page.evaluate("window.switchboard.syncs()") == 1

        await gateway.stop()
        await page.wait_for_function(
            "() => window.switchboard.connState() !== 'live'", timeout=10_000
        )
        await append_events(gw_pool, gw_redis, merchant, 30)  # 30 behind: over the cap of 20
        await exits.enter_async_context(running_gateway(settings, gw_pool, stack.gateway_port))
        await page.wait_for_function("() => window.switchboard.syncs() === 2", timeout=20_000)
        await page.wait_for_function(
            "() => window.switchboard.connState() === 'live'", timeout=20_000
        )
        await append_events(gw_pool, gw_redis, merchant, 5)
        await page.wait_for_function("() => window.switchboard.lastSeq() === 40", timeout=10_000)
        assert await page.evaluate("window.switchboard.seqs()") == list(range(1, 41))
        # Rows are drawn on the next animation frame, which a loaded machine can delay.
        await page.wait_for_function(
            "() => document.querySelectorAll('#events tr').length >= 40", timeout=10_000
        )
        assert await page.locator("#events tr").count() == 40
        assert errors == []
