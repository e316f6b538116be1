"""The dashboard's reads on a real streaming replica (``SWITCHBOARD_DATABASE_READ_URL``): they show
what has replicated and say how fresh it is, a paused replica shows old data with its lag while
decisions still read the primary, and a replica that is down answers 503 without stopping the
rest of the api."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from playwright.async_api import expect

from api.auth import create_api_key
from core.db import connect_pool
from core.merchant_events import events_after
from core.settings import DEV_ADMIN_API_KEY, Settings
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres, EmbeddedReplica
from tests.gateway.conftest import CHROMIUM
from tests.gateway.support import (
    append_events,
    launch_chromium,
    open_page,
    running_gateway,
    serve_pages,
    sign_in,
    signed_in_page,
)
from tests.money_support import new_merchant
from tests.support import fresh_database, running_api, wait_for

ADMIN = {"authorization": f"Bearer {DEV_ADMIN_API_KEY}"}


@dataclass
class ReplicatedApi:
    primary: asyncpg.Pool
    replica: EmbeddedReplica
    http: httpx.AsyncClient
    settings: Settings


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A Postgres of this module's own: the session's may be an outside server."""
    with EmbeddedPostgres(tmp_path_factory.mktemp("primary"), free_port()) as server:
        yield server


@pytest.fixture(scope="module")
def replica(
    primary: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedReplica]:
    with primary.start_replica(tmp_path_factory.mktemp("replica"), free_port()) as server:
        yield server


@pytest_asyncio.fixture(scope="module")
async def replicated(
    settings: Settings, primary: EmbeddedPostgres, replica: EmbeddedReplica
) -> AsyncIterator[ReplicatedApi]:
    """The api on a fresh database of the primary, its dashboard reads on the replica."""
    database_url = await fresh_database(primary.url)
    database = database_url.rpartition("/")[2]
    replicated_settings = settings.model_copy(
        update={
            "database_url": database_url,
            "database_read_url": f"postgresql://{replica.user}@{replica.host}:{replica.port}"
            f"/{database}",
            # A replica that is down answers at once (connection refused); one that hangs, soon.
            "database_timeout_seconds": 2.0,
        }
    )
    pool = await connect_pool(database_url, size=4)
    try:
        async with (
            running_api(replicated_settings) as url,
            httpx.AsyncClient(base_url=url, headers=ADMIN, timeout=10) as http,
        ):
            yield ReplicatedApi(pool, replica, http, replicated_settings)
    finally:
        await pool.close()


@contextlib.contextmanager
def paused(replica: EmbeddedReplica) -> Iterator[None]:
    replica.pause_replay()
    try:
        yield
    finally:
        replica.resume_replay()


async def append(pool: asyncpg.Pool, merchant: str, count: int) -> None:
    """``count`` events on the merchant's feed, one transaction each, as the ledger appends them."""
    for _ in range(count):
        await append_events(pool, None, merchant, 1)


@pytest.fixture
def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium`")
    return CHROMIUM


async def sync(api: ReplicatedApi, merchant: str, **params: Any) -> dict[str, Any]:
    response = await api.http.get(f"/v1/merchants/{merchant}/sync", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def desk(api: ReplicatedApi, merchant: str) -> dict[str, Any]:
    response = await api.http.get("/v1/desk/stats", params={"merchant_id": merchant})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def synced_to(api: ReplicatedApi, merchant: str, head: int) -> dict[str, Any]:
    """The sync answer once the replica has applied up to ``head`` and says it is caught up."""

    async def probe() -> dict[str, Any] | None:
        body = await sync(api, merchant)
        return body if body["head_seq"] == head and body["replica_lag_seconds"] == 0 else None

    return await wait_for(probe, timeout=10, what=f"the replica to reach seq {head}")


async def desk_shows(api: ReplicatedApi, merchant: str, **queue: int) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        body = await desk(api, merchant)
        counts = {status: body["queue"][status] for status in queue}
        return body if counts == queue and body["replica_lag_seconds"] == 0 else None

    return await wait_for(probe, timeout=10, what=f"the desk stats to show {queue}")


async def create_request(api: ReplicatedApi, merchant: str, amount: int, currency: str) -> str:
    response = await api.http.post(
        "/v1/exchange-requests",
        json={
            "merchant_id": merchant,
            "customer_id": f"c-{uuid.uuid4().hex[:10]}",
            "from_amount": amount,
            "from_currency": currency,
            "to_currency": "USDT",
        },
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 201, response.text
    request_id: str = response.json()["id"]
    return request_id


async def operator(pool: asyncpg.Pool) -> tuple[str, dict[str, str]]:
    name = f"desk-{uuid.uuid4().hex[:6]}"
    async with pool.acquire() as conn:
        key_id, key = await create_api_key(conn, name, ["read", "replay"])
    return f"api-key:{key_id}:{name}", {"authorization": f"Bearer {key}"}


async def test_replica_backed_routes_show_what_replicated_and_say_so(
    replicated: ReplicatedApi,
) -> None:
    """Sync and the desk stats read the replica (read_from, no lag once caught up): events, the
    queue by status, volumes by currency and the average claim-to-completion time."""
    api = replicated
    merchant = await new_merchant(api.primary)
    await append(api.primary, merchant, 5)
    body = await synced_to(api, merchant, 5)
    assert body["read_from"] == "replica"
    assert [event["seq"] for event in body["events"]] == [1, 2, 3, 4, 5]
    assert datetime.fromisoformat(body["as_of"]).tzinfo is not None

    done, queued = (
        [await create_request(api, merchant, 1_000, "EUR") for _ in range(2)],
        [await create_request(api, merchant, 500, currency) for currency in ("EUR", "GBP")],
    )
    _, headers = await operator(api.primary)
    for request_id in done:
        for path, payload in (
            ("claim", None),
            ("advance", {"to": "processing"}),
            ("advance", {"to": "completed"}),
        ):
            response = await api.http.post(
                f"/v1/exchange-requests/{request_id}/{path}", json=payload, headers=headers
            )
            assert response.status_code == 200, response.text

    stats = await desk_shows(api, merchant, pending=len(queued), completed=len(done))
    assert stats["read_from"] == "replica"
    assert stats["queue"]["assigned"] == stats["queue"]["processing"] == 0
    assert stats["oldest_pending_since"] is not None
    assert stats["volumes"] == [
        {
            "currency": "EUR",
            "created": 3,
            "created_amount": 2_500,
            "completed": 2,
            "completed_amount": 2_000,
        },
        {
            "currency": "GBP",
            "created": 1,
            "created_amount": 500,
            "completed": 0,
            "completed_amount": 0,
        },
    ]
    expected = await api.primary.fetchval(
        "SELECT avg(extract(epoch FROM d.at - c.at))::float8 FROM audit_log c"
        " JOIN audit_log d ON d.entity_id = c.entity_id AND d.to_state = 'completed'"
        " WHERE c.entity_id = ANY($1::text[]) AND c.to_state = 'assigned'",
        done,
    )
    assert stats["handling"]["completed"] == 2
    assert stats["handling"]["average_seconds"] == pytest.approx(expected)


async def test_a_lagging_replica_shows_a_consistent_past_and_decisions_read_the_primary(
    replicated: ReplicatedApi,
) -> None:
    """With replay paused: sync answers the old head with every event up to it (the feed's
    resume from the primary then fills the rest without a gap), the desk shows the old queue,
    both report their lag; claims and wallet moves decide on the primary. Resumed, they catch
    up."""
    api = replicated
    merchant = await new_merchant(api.primary)
    await append(api.primary, merchant, 3)
    request_id = await create_request(api, merchant, 700, "EUR")
    await synced_to(api, merchant, 3)
    await desk_shows(api, merchant, pending=1)
    winner, winner_headers = await operator(api.primary)
    _, loser_headers = await operator(api.primary)

    with paused(api.replica):
        paused_at: datetime = await api.primary.fetchval("SELECT clock_timestamp()")
        await append(api.primary, merchant, 4)

        # Decisions: the claim sees the request the replica does not know is claimed.
        claim = f"/v1/exchange-requests/{request_id}/claim"
        won = await api.http.post(claim, headers=winner_headers)
        assert won.status_code == 200, won.text
        lost = await api.http.post(claim, headers=loser_headers)
        assert lost.status_code == 409, lost.text
        assert lost.json()["assignee"] == winner
        await assert_wallet_moves_decide_on_the_primary(api, merchant)

        # Reads: the past, whole, and how old it is.
        body = await sync(api, merchant)
        assert body["head_seq"] == 3
        assert [event["seq"] for event in body["events"]] == [1, 2, 3]
        assert body["has_more"] is False
        assert body["replica_lag_seconds"] > 0
        assert datetime.fromisoformat(body["as_of"]) < paused_at
        async with api.primary.acquire() as conn:
            rest = await events_after(conn, merchant, body["head_seq"])
        assert [row["seq"] for row in rest] == [4, 5, 6, 7]  # what the gateway replays next
        stats = await desk(api, merchant)
        assert stats["queue"]["pending"] == 1 and stats["queue"]["assigned"] == 0
        assert stats["replica_lag_seconds"] > 0

    body = await synced_to(api, merchant, 7)
    assert [event["seq"] for event in body["events"]] == list(range(1, 8))
    await desk_shows(api, merchant, pending=0, assigned=1)


async def test_the_page_loads_from_a_lagging_replica_and_its_feed_fills_in_the_rest(
    replicated: ReplicatedApi, chromium: str
) -> None:
    """In headless Chromium, with replay paused: the page loads its snapshot from the replica
    (3 events of 7), resumes the gateway's feed from that seq, and shows all 7 in order."""
    api = replicated
    merchant = await new_merchant(api.primary)
    await append(api.primary, merchant, 3)
    await synced_to(api, merchant, 3)
    gateway_port = free_port()
    settings = api.settings.model_copy(
        update={"gateway_public_url": f"ws://127.0.0.1:{gateway_port}"}
    )
    with paused(api.replica):
        await append(api.primary, merchant, 4)
        async with contextlib.AsyncExitStack() as exits:
            api_url = await exits.enter_async_context(running_api(settings))
            gateway_settings = settings.model_copy(update={"gateway_allowed_origins": [api_url]})
            await exits.enter_async_context(
                running_gateway(gateway_settings, api.primary, gateway_port)
            )
            lagging = await sync(api, merchant)
            assert (lagging["head_seq"], lagging["replica_lag_seconds"] > 0) == (3, True)
            page, errors = await signed_in_page(exits, chromium, api_url, settings, merchant)
            await page.wait_for_function("() => window.switchboard.lastSeq() === 7")
            assert await page.evaluate("window.switchboard.syncs()") == 1
            assert await page.evaluate("window.switchboard.seqs()") == list(range(1, 8))
            assert errors == []


async def test_the_desk_page_says_how_old_its_aggregates_are_while_its_queue_is_live(
    replicated: ReplicatedApi, chromium: str
) -> None:
    """In headless Chromium, with replay paused: a new request shows in the desk's live queue
    (primary and feed) while the aggregates, read on the replica, still count the old queue and
    say "data as of …"; resumed, they catch up and the line goes."""
    api = replicated
    merchant = await new_merchant(api.primary)

    async def caught_up() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.http.get("/v1/desk/stats")).json()
        return body if body["replica_lag_seconds"] == 0 else None

    before = (await wait_for(caught_up, timeout=10, what="the replica to catch up"))["queue"]
    gateway_port = free_port()
    settings = api.settings.model_copy(
        update={"gateway_public_url": f"ws://127.0.0.1:{gateway_port}"}
    )
    async with contextlib.AsyncExitStack() as exits:
        api_url = (await serve_pages(exits, settings, api.primary, gateway_port)).api_url
        errors: list[str] = []
        page = await open_page(
            await launch_chromium(exits, chromium), f"{api_url}/dashboard/desk", errors
        )
        await sign_in(page, DEV_ADMIN_API_KEY)
        pending = page.locator("#desk-kpis .kpi").first.locator(".value")
        await expect(pending).to_have_text(str(before["pending"]))
        await expect(page.locator("#desk-freshness")).to_be_hidden()
        with paused(api.replica):
            request_id = await create_request(api, merchant, 700, "EUR")
            await expect(page.locator(f"#queue tr[data-request='{request_id}']")).to_be_visible()
            freshness = page.locator("#desk-freshness")
            await expect(freshness).to_contain_text("data as of", timeout=15_000)
            await expect(freshness).to_be_visible()
            await expect(pending).to_have_text(str(before["pending"]))
        await expect(pending).to_have_text(str(before["pending"] + 1), timeout=15_000)
        await expect(page.locator("#desk-freshness")).to_be_hidden()
        assert errors == []


async def assert_wallet_moves_decide_on_the_primary(api: ReplicatedApi, merchant: str) -> None:
    """Wallets opened and funded while the replica is paused: it has none of them, yet moves
    are checked against the primary's balances and keys."""
    source, target = [
        (
            await api.http.post("/v1/wallets", json={"merchant_id": merchant, "currency": "EUR"})
        ).json()["id"]
        for _ in range(2)
    ]
    top_up = await api.http.post(
        f"/v1/wallets/{source}/top-ups",
        json={"amount": 100},
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert top_up.status_code == 201, top_up.text
    key = str(uuid.uuid4())
    move = {"from_wallet": source, "to_wallet": target, "amount": 60}
    first = await api.http.post("/v1/transfers", json=move, headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    again = await api.http.post("/v1/transfers", json=move, headers={"Idempotency-Key": key})
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"
    over = await api.http.post(
        "/v1/transfers", json=move, headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    assert over.status_code == 409, over.text
    assert over.json()["type"] == "/problems/insufficient-funds"


async def test_a_replica_that_is_down_answers_503_and_the_rest_goes_on(
    replicated: ReplicatedApi,
) -> None:
    """Replica stopped: sync and the desk stats answer a 503 problem with Retry-After (never the
    primary's data in disguise); health, claims and creates go on. Restarted, it streams again
    and the reads come back."""
    api = replicated
    merchant = await new_merchant(api.primary)
    request_id = await create_request(api, merchant, 900, "EUR")
    await desk_shows(api, merchant, pending=1)
    _, headers = await operator(api.primary)
    api.replica.stop()
    try:
        for path in (f"/v1/merchants/{merchant}/sync", "/v1/desk/stats"):
            response = await api.http.get(path)
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["retry-after"] == "5"
            assert response.json()["type"] == "/problems/read-replica-unavailable"
        assert (await api.http.get("/healthz")).status_code == 200
        claimed = await api.http.post(f"/v1/exchange-requests/{request_id}/claim", headers=headers)
        assert claimed.status_code == 200, claimed.text
        await append(api.primary, merchant, 2)
    finally:
        api.replica.start()
    await synced_to(api, merchant, 2)
    await desk_shows(api, merchant, pending=0, assigned=1)


async def test_the_api_starts_while_its_replica_is_down(settings: Settings) -> None:
    """Nothing listens at the read URL: the api starts and serves, and only the replica-backed
    reads answer 503."""
    unreachable = settings.model_copy(
        update={"database_read_url": f"postgresql://switchboard@127.0.0.1:{free_port()}/none"}
    )
    async with (
        running_api(unreachable) as url,
        httpx.AsyncClient(base_url=url, headers=ADMIN, timeout=10) as http,
    ):
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/v1/desk/stats")).status_code == 503


async def test_without_a_read_url_the_reads_come_from_the_primary(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Unset, sync and the desk stats read the primary and say so, with no lag."""
    merchant = await new_merchant(pool)
    await append(pool, merchant, 1)
    for path in (f"/v1/merchants/{merchant}/sync", "/v1/desk/stats"):
        body = (await http.get(path, headers=ADMIN)).json()
        assert (body["read_from"], body["replica_lag_seconds"]) == ("primary", 0), body
        assert body["as_of"] is not None
