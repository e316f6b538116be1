"""Gateway fixtures: a database of its own (no Temporal needed) and gateway-friendly settings."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from core.db import connect_pool
from core.settings import Settings
from gateway.server import Gateway
from tests.gateway.support import running_gateway
from tests.support import fresh_database

CHROMIUM = "/usr/bin/chromium"


@pytest_asyncio.fixture(scope="session")
async def gw_settings(postgres_admin_url: str, redis_url: str) -> Settings:
    """Test settings: generous rate limits (every client is 127.0.0.1), quick auth timeout."""
    return Settings(
        environment="test",
        database_url=await fresh_database(postgres_admin_url),
        redis_url=redis_url,
        gateway_connect_rate_per_source=5000,
        gateway_connect_rate_global=5000,
        gateway_max_connections_per_merchant=200,
        gateway_auth_timeout_seconds=1.0,
        gateway_gap_grace_seconds=0.05,
        gateway_outage_poll_seconds=0.2,
    )


@pytest_asyncio.fixture(scope="session")
async def gw_pool(gw_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await connect_pool(gw_settings.database_url, size=10)
    yield pool
    await pool.close()


@pytest_asyncio.fixture
async def gateway(gw_settings: Settings, gw_pool: asyncpg.Pool) -> AsyncIterator[Gateway]:
    async with running_gateway(gw_settings, gw_pool) as running:
        yield running


@pytest_asyncio.fixture(scope="session")
async def gw_redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium for the dashboard's browser tests (Playwright cannot download its own
    here); the test is skipped without it."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"{CHROMIUM} is missing: `apt-get install chromium` (./run test does it when it can)"
        )
    return CHROMIUM
