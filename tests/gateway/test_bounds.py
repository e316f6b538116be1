"""Bounds that keep a feed from stalling silently or growing without limit: a gap Postgres cannot
fill, a resume from too far back, and payloads on a channel that name another merchant."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from core.contracts import merchant_channel
from core.db import connect_pool
from core.feeds import Topic
from core.merchant_events import encode_merchant_event
from core.settings import Settings
from gateway.server import Gateway
from tests.gateway.support import (
    TcpBalancer,
    append_events,
    merchant_id,
    recorder,
    running_gateway,
)


@contextlib.asynccontextmanager
async def pluggable_postgres(database_url: str) -> AsyncIterator[tuple[asyncpg.Pool, TcpBalancer]]:
    """A pool that reaches the real Postgres through a TCP proxy; leaving the proxy's context
    (``await proxy.__aexit__()``) resets its connections and refuses new ones."""
    parts = urlsplit(database_url)
    assert parts.port is not None
    proxy = TcpBalancer([parts.port])
    await proxy.__aenter__()
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
    pool = await connect_pool(urlunsplit(parts._replace(netloc=netloc)), size=2)
    try:
        yield pool, proxy
    finally:
        pool.terminate()
        with contextlib.suppress(RuntimeError):  # already unplugged
            await proxy.__aexit__(None, None, None)


async def _unplug(proxy: TcpBalancer) -> None:
    await proxy.__aexit__(None, None, None)


async def test_a_gap_postgres_cannot_fill_closes_with_3010_after_max_gap_seconds(
    gw_settings: Settings, gw_pool: asyncpg.Pool, gw_redis: Redis, gateway: Gateway
) -> None:
    """Postgres unreachable while a gap is open: the feed's clients get 3010 once the gap has
    waited ``gateway_max_gap_seconds``, the feed is released, and a resume by seq is gapless."""
    settings = gw_settings.model_copy(update={"gateway_max_gap_seconds": 1.0})
    merchant = merchant_id()
    async with (
        pluggable_postgres(settings.database_url) as (pool, proxy),
        running_gateway(settings, pool) as unplugged,
    ):
        client = await recorder(settings, unplugged.port, merchant)
        await client.wait_live()
        feed = unplugged.hub.feeds[Topic.merchant(merchant)]
        await _unplug(proxy)
        held_from = time.monotonic()
        await append_events(gw_pool, gw_redis, merchant, 5, publish_order=[1, 2, 3, 4])
        assert await client.wait_closed() == 3010
        assert time.monotonic() - held_from >= settings.gateway_max_gap_seconds
        assert client.events == []
        assert Topic.merchant(merchant) not in unplugged.hub.feeds
        assert feed.pending == {} and feed.pending_bytes == 0 and not feed.live
    resumed = await recorder(gw_settings, gateway.port, merchant, since_seq=0)
    await resumed.wait_seq(5)
    assert resumed.seqs == [1, 2, 3, 4, 5]
    await resumed.stop()


@pytest.mark.parametrize(
    "bound", [{"gateway_max_pending_events": 20}, {"gateway_max_pending_bytes": 16 * 1024}]
)
async def test_events_held_back_past_the_bound_close_with_3010(
    gw_settings: Settings, gw_pool: asyncpg.Pool, gw_redis: Redis, bound: dict[str, int]
) -> None:
    """Behind a gap Postgres cannot fill, a feed holds back at most the configured count or
    bytes of events, then closes its clients with 3010 long before the gap's deadline."""
    settings = gw_settings.model_copy(update={"gateway_max_gap_seconds": 600.0, **bound})
    merchant = merchant_id()
    async with (
        pluggable_postgres(settings.database_url) as (pool, proxy),
        running_gateway(settings, pool) as gateway,
    ):
        clients = [await recorder(settings, gateway.port, merchant) for _ in range(2)]
        for client in clients:
            await client.wait_live()
        feed = gateway.hub.feeds[Topic.merchant(merchant)]
        await _unplug(proxy)
        await append_events(
            gw_pool,
            gw_redis,
            merchant,
            60,
            publish_order=list(range(1, 60)),
            data={"amount": 100, "currency": "EUR", "blob": "x" * 1000},
        )
        for client in clients:
            assert await client.wait_closed() == 3010
            assert client.events == []
        assert Topic.merchant(merchant) not in gateway.hub.feeds
        assert feed.pending == {} and feed.pending_bytes == 0


async def test_resume_further_back_than_the_replay_cap_closes_with_3010(
    gw_settings: Settings, gw_pool: asyncpg.Pool, gw_redis: Redis
) -> None:
    """A client resuming more than ``gateway_max_replay_events`` back is closed with 3010 and
    gets no events; one within the cap is replayed gapless and goes live."""
    settings = gw_settings.model_copy(update={"gateway_max_replay_events": 50})
    async with running_gateway(settings, gw_pool) as gateway:
        merchant = merchant_id()
        await append_events(gw_pool, gw_redis, merchant, 60)
        keep_alive = await recorder(settings, gateway.port, merchant)
        await keep_alive.wait_live()  # the feed's head is 60 from here on
        too_far = await recorder(settings, gateway.port, merchant, since_seq=9)
        assert await too_far.wait_closed() == 3010
        assert too_far.events == []
        within = await recorder(settings, gateway.port, merchant, since_seq=10)
        await within.wait_live()
        assert within.seqs == list(range(11, 61))
        for client in (keep_alive, within):
            await client.stop()


async def test_payloads_naming_another_merchant_are_dropped_and_counted(
    gateway: Gateway, gw_settings: Settings, gw_pool: asyncpg.Pool, gw_redis: Redis
) -> None:
    """An event of merchant B published on merchant A's channel (as encoded, or with its keys
    reordered) never reaches A's clients and is counted; A's own event still does."""
    merchant, other = merchant_id(), merchant_id()
    client = await recorder(gw_settings, gateway.port, merchant)
    await client.wait_live()
    before = _dropped("other_topic")
    foreign = (await append_events(gw_pool, None, other, 1))[0]
    encoded = encode_merchant_event(foreign)
    reordered = json.dumps({"seq": 1, **json.loads(encoded)})
    for payload in (encoded, reordered):
        await gw_redis.publish(merchant_channel(merchant), payload)
    await append_events(gw_pool, gw_redis, merchant, 1)  # same channel: arrives after those
    await client.wait_seq(1)
    assert [(e["merchant_id"], e["seq"]) for e in client.events] == [(merchant, 1)]
    assert _dropped("other_topic") == before + 2
    await client.stop()


def _dropped(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "switchboard_gateway_events_dropped_total", {"reason": reason}
    )
    return value or 0.0
