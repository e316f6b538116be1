"""Outbound webhooks end to end (RELIABILITY.md W6, W7): partner webhook → ledger → delivery lane
→ a real stub merchant that verifies every request with the public ``standardwebhooks`` package.

The session settings retry on a short schedule (``tests/conftest.py``) and allow-list only
127.0.0.1/32, the stub merchants' address.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.outbound.stub import Answer, StubMerchant
from tests.outbound.support import deliveries_of, wait_delivery_status
from tests.support import Partner, wait_for

pytestmark = pytest.mark.usefixtures("pipeline")

ADMIN = {"authorization": "Bearer sb_dev_admin_key"}


@pytest.fixture
async def stub() -> AsyncIterator[StubMerchant]:
    async with StubMerchant().running() as merchant:
        yield merchant


def merchant_id() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


async def add_endpoint(
    http: httpx.AsyncClient, stub: StubMerchant, merchant: str, path: str, **fields: Any
) -> dict[str, Any]:
    response = await http.post(
        "/v1/endpoints",
        json={"merchant_id": merchant, "url": f"{stub.url}{path}", **fields},
        headers=ADMIN,
    )
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    stub.secrets[path] = [endpoint["secret"]]
    return endpoint


async def pay(partner: Partner, merchant: str, payment_id: str = "pay_1", **extra: Any) -> str:
    return await partner.send(
        "payment.succeeded",
        payment_id=payment_id,
        merchant_id=merchant,
        amount=1250,
        currency="EUR",
        **extra,
    )


async def test_retries_keep_the_webhook_id_and_sign_each_attempt_afresh(
    partner: Partner, pool: asyncpg.Pool, http: httpx.AsyncClient, stub: StubMerchant
) -> None:
    """W6: 500 x3 then 200 → four attempts, one webhook-id, each verified, one success."""
    merchant = merchant_id()
    endpoint = await add_endpoint(http, stub, merchant, "/hooks")
    stub.script("/hooks", *[Answer(500)] * 3)
    event_id = await pay(partner, merchant)
    delivery = await wait_delivery_status(pool, event_id, "succeeded")

    received = stub.at("/hooks")
    assert len(received) == 4
    assert {r.webhook_id for r in received} == {delivery["id"]}
    assert all(r.verified_with == (endpoint["secret"],) for r in received)
    assert len({r.timestamp for r in received}) == 4, "each attempt carries a fresh timestamp"
    assert len({r.signature for r in received}) == 4
    body = json.loads(received[0].body)
    assert set(body) == {"type", "timestamp", "data"}
    assert body["type"] == "payment.succeeded"
    assert body["data"]["event_id"] == event_id
    assert body["data"]["seq"] == delivery["seq"] >= 1
    assert body["data"]["amount"] == 1250
    assert all(r.body == received[0].body for r in received), "the body never changes"

    attempts = (await http.get(f"/v1/endpoints/{endpoint['id']}/attempts", headers=ADMIN)).json()
    assert [a["outcome"] for a in reversed(attempts)] == ["failed"] * 3 + ["delivered"]
    assert [a["status_code"] for a in reversed(attempts)] == [500, 500, 500, 200]
    assert attempts[0]["response_head"] == "ok"
    health = (await http.get(f"/v1/endpoints/{endpoint['id']}", headers=ADMIN)).json()
    assert health["consecutive_failures"] == 0
    assert health["deliveries"] == {"succeeded": 1}
    (listed,) = (await http.get(f"/v1/events/{event_id}/deliveries", headers=ADMIN)).json()
    assert listed["id"] == delivery["id"] and len(listed["attempt_log"]) == 4
    trace = (await http.get(f"/v1/webhooks/{event_id}", headers=ADMIN)).json()
    (step,) = [s for s in trace["steps"] if s["step"].startswith("delivery ")]
    assert step["step"] == f"delivery succeeded: {endpoint['id']}"
    assert step["detail"] == f"{delivery['id']}, 4 attempt(s)"


async def test_gone_disables_the_endpoint(
    partner: Partner, pool: asyncpg.Pool, http: httpx.AsyncClient, stub: StubMerchant
) -> None:
    """W6: 410 Gone disables the endpoint at once, with an alert; later events are kept as
    dead letters (replayable once the endpoint is re-enabled), never sent."""
    merchant = merchant_id()
    endpoint = await add_endpoint(http, stub, merchant, "/gone")
    stub.script("/gone", Answer(410))
    first = await pay(partner, merchant, "pay_gone")
    delivery = await wait_delivery_status(pool, first, "dead_lettered")
    assert delivery["attempts"] == 1
    health = (await http.get(f"/v1/endpoints/{endpoint['id']}", headers=ADMIN)).json()
    assert health["status"] == "disabled"
    assert "410" in health["status_reason"]
    alert = await pool.fetchval(
        "SELECT kind FROM alerts WHERE dedup_key = $1", f"endpoint_disabled:{endpoint['id']}"
    )
    assert alert == "endpoint_disabled"
    second = await pay(partner, merchant, "pay_after_gone")
    (kept,) = await wait_for(
        lambda: deliveries_of(pool, second), what="the second event's delivery to be planned"
    )
    assert (kept["status"], kept["last_error"]) == ("dead_lettered", "endpoint disabled")
    assert len(stub.at("/gone")) == 1


async def test_redirects_are_failures_and_never_followed(
    partner: Partner, pool: asyncpg.Pool, http: httpx.AsyncClient, stub: StubMerchant
) -> None:
    """W6: every 3xx counts as a failure; the Location is never requested; alerts fire."""
    merchant = merchant_id()
    endpoint = await add_endpoint(http, stub, merchant, "/moved")
    codes = [301, 302, 307, 308, 301]
    stub.script("/moved", *[Answer(code, {"location": f"{stub.url}/canary"}) for code in codes])
    event_id = await pay(partner, merchant, "pay_moved")
    delivery = await wait_delivery_status(pool, event_id, "dead_lettered")
    assert delivery["attempts"] == len(codes) == len(stub.at("/moved"))
    assert stub.at("/canary") == []
    kinds = {
        row["kind"]
        for row in await pool.fetch(
            "SELECT kind FROM alerts WHERE details->>'endpoint_id' = $1 OR dedup_key = $2",
            endpoint["id"],
            f"delivery_exhausted:{endpoint['id']}",
        )
    }
    assert kinds == {"endpoint_failing", "delivery_exhausted"}


async def test_retry_after_is_honoured(
    partner: Partner, pool: asyncpg.Pool, http: httpx.AsyncClient, stub: StubMerchant
) -> None:
    """W6: a 429 with ``Retry-After: 3`` moves the next attempt 3 s out (±1 s), not 0.2 s."""
    merchant = merchant_id()
    await add_endpoint(http, stub, merchant, "/slow-down")
    stub.script("/slow-down", Answer(429, {"retry-after": "3"}))
    event_id = await pay(partner, merchant, "pay_429")
    await wait_delivery_status(pool, event_id, "succeeded")
    first, second = stub.at("/slow-down")
    assert 2.0 <= second.at - first.at <= 4.0


async def test_secret_rotation_signs_with_both_then_only_the_new(
    partner: Partner, pool: asyncpg.Pool, http: httpx.AsyncClient, stub: StubMerchant
) -> None:
    """W7: during the overlap, receivers on the old and on the new secret both verify."""
    merchant = merchant_id()
    endpoint = await add_endpoint(http, stub, merchant, "/rotating")
    old = endpoint["secret"]
    rotated = await http.post(
        f"/v1/endpoints/{endpoint['id']}/secret/rotate",
        params={"overlap_seconds": 2},
        headers=ADMIN,
    )
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new != old
    stub.secrets["/rotating"] = [old, new]
    during = await pay(partner, merchant, "pay_during")
    await wait_delivery_status(pool, during, "succeeded")
    expires = rotated.json()["previous_secrets_expire_at"]
    await wait_for(
        lambda: pool.fetchval("SELECT now() > $1::text::timestamptz", expires),
        timeout=10,
        what="the overlap to end",
    )
    after = await pay(partner, merchant, "pay_after")
    await wait_delivery_status(pool, after, "succeeded")
    first, second = stub.at("/rotating")
    assert first.verified_with == (old, new)
    assert second.verified_with == (new,)
    failed = await pool.fetchval(
        "SELECT count(*) FROM delivery_attempts WHERE endpoint_id = $1 AND outcome <> 'delivered'",
        endpoint["id"],
    )
    assert failed == 0


async def test_one_entity_is_delivered_in_order_under_retries(
    partner: Partner, pool: asyncpg.Pool, http: httpx.AsyncClient, stub: StubMerchant
) -> None:
    """The payment fails twice at the endpoint; its refund is not sent before it succeeds,
    while another payment's delivery is not held back."""
    merchant = merchant_id()
    await add_endpoint(http, stub, merchant, "/ordered")
    stub.script("/ordered", Answer(500), Answer(500))
    common = {"merchant_id": merchant, "currency": "EUR"}
    payment = await partner.send("payment.succeeded", payment_id="pay_o", amount=900, **common)
    refund = await partner.send(
        "refund.succeeded", refund_id="re_o", payment_id="pay_o", amount=100, **common
    )
    await wait_delivery_status(pool, payment, "succeeded")
    await wait_delivery_status(pool, refund, "succeeded")
    types = [json.loads(r.body)["type"] for r in stub.at("/ordered")]
    assert types == ["payment.succeeded"] * 3 + ["refund.succeeded"]


async def test_paused_endpoint_holds_deliveries_until_resumed(
    partner: Partner, pool: asyncpg.Pool, http: httpx.AsyncClient, stub: StubMerchant
) -> None:
    merchant = merchant_id()
    endpoint = await add_endpoint(http, stub, merchant, "/paused")
    paused = await http.post(f"/v1/endpoints/{endpoint['id']}/pause", headers=ADMIN)
    assert paused.json()["status"] == "paused"
    event_id = await pay(partner, merchant, "pay_paused")
    (delivery,) = await wait_for(
        lambda: deliveries_of(pool, event_id), what="the delivery to be planned"
    )
    assert delivery["status"] == "pending"
    resumed = await http.post(f"/v1/endpoints/{endpoint['id']}/resume", headers=ADMIN)
    assert resumed.json()["status"] == "active"
    await wait_delivery_status(pool, event_id, "succeeded")
    assert len(stub.at("/paused")) == 1


async def test_event_type_filter(
    partner: Partner, pool: asyncpg.Pool, http: httpx.AsyncClient, stub: StubMerchant
) -> None:
    merchant = merchant_id()
    await add_endpoint(http, stub, merchant, "/refunds-only", event_types=["refund.succeeded"])
    event_id = await pay(partner, merchant, "pay_filtered")
    await wait_for(
        lambda: pool.fetchval("SELECT 1 FROM events WHERE event_id = $1", event_id),
        what="the payment to be applied",
    )
    assert await deliveries_of(pool, event_id) == []


async def test_dead_letters_replay_with_dry_run_and_audit(
    partner: Partner, pool: asyncpg.Pool, http: httpx.AsyncClient, stub: StubMerchant
) -> None:
    """Exhausted deliveries are dead letters; a dry run counts them, a replay delivers them
    with the same webhook-id, and the replay is audited."""
    merchant = merchant_id()
    endpoint = await add_endpoint(http, stub, merchant, "/flaky")
    stub.script("/flaky", *[Answer(503)] * 5)
    event_id = await pay(partner, merchant, "pay_dead")
    dead = await wait_delivery_status(pool, event_id, "dead_lettered")
    selection = {"endpoint_id": endpoint["id"]}
    dry = await http.post("/v1/deliveries/replay", json=selection, headers=ADMIN)
    assert dry.json() == {
        "matched": 1,
        "replayed": 0,
        "dry_run": True,
        "event_ids": [dead["id"]],
    }
    assert (await deliveries_of(pool, event_id))[0]["status"] == "dead_lettered"
    real = await http.post(
        "/v1/deliveries/replay", json={**selection, "dry_run": False}, headers=ADMIN
    )
    assert real.json()["replayed"] == 1
    replayed = await wait_delivery_status(pool, event_id, "succeeded")
    assert replayed["cycle"] == 1
    assert {r.webhook_id for r in stub.at("/flaky")} == {dead["id"]}
    assert len(stub.at("/flaky")) == 6
    audit = await pool.fetch(
        "SELECT from_state, to_state, actor FROM audit_log WHERE entity_type = 'delivery'"
        " AND entity_id = $1 ORDER BY id",
        dead["id"],
    )
    assert [(r["from_state"], r["to_state"], r["actor"]) for r in audit] == [
        ("pending", "dead_lettered", "switchboard"),
        ("dead_lettered", "pending", "operator"),
    ]
    again = await http.post(f"/v1/deliveries/{dead['id']}/replay", headers=ADMIN)
    assert again.status_code == 409


async def test_endpoint_urls_are_vetted_at_registration(http: httpx.AsyncClient) -> None:
    for url in ("ftp://example.com/", "http://10.0.0.1/hook", "https://user:pw@example.com/"):
        response = await http.post(
            "/v1/endpoints", json={"merchant_id": "m-vet", "url": url}, headers=ADMIN
        )
        assert response.status_code == 422, url
        assert response.headers["content-type"] == "application/problem+json"


async def test_a_hanging_endpoint_times_out_and_does_not_slow_a_healthy_one(
    partner: Partner, pool: asyncpg.Pool, http: httpx.AsyncClient, stub: StubMerchant
) -> None:
    """W6: a hang fails at the 30 s timeout (±1 s); meanwhile another merchant's endpoint
    keeps getting its deliveries at once."""
    stuck, healthy = merchant_id(), merchant_id()
    await add_endpoint(http, stub, stuck, "/hang")
    await add_endpoint(http, stub, healthy, "/fine")
    stub.script("/hang", Answer(hang=True))
    hanging = await pay(partner, stuck, "pay_hang")
    await wait_for(lambda: _count(stub, "/hang"), what="the hanging request")
    started = time.monotonic()
    fine = [await pay(partner, healthy, f"pay_fine_{n}") for n in range(5)]
    for event_id in fine:
        await wait_delivery_status(pool, event_id, "succeeded", timeout=10)
    assert time.monotonic() - started < 10
    await wait_for(
        lambda: pool.fetchval(
            "SELECT latency_ms FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id"
            " WHERE d.event_id = $1 AND a.attempt = 1",
            hanging,
        ),
        timeout=40,
        what="the hanging attempt to time out",
    )
    attempt = await pool.fetchrow(
        "SELECT a.latency_ms, a.error FROM delivery_attempts a JOIN deliveries d"
        " ON d.id = a.delivery_id WHERE d.event_id = $1 AND a.attempt = 1",
        hanging,
    )
    assert attempt is not None
    assert 29_000 <= attempt["latency_ms"] <= 31_000
    assert "timed out" in attempt["error"]


async def _count(stub: StubMerchant, path: str) -> int:
    return len(stub.at(path))


async def test_a_destination_that_turns_private_is_refused_when_connecting(
    partner: Partner, pool: asyncpg.Pool, http: httpx.AsyncClient
) -> None:
    """W5 through the whole pipeline: an endpoint whose address is outside the allow-list
    (here 127.0.0.2, written straight into the table as if its DNS had changed) is never
    dialled: the attempt fails as refused and the canary listener sees no connection."""
    accepted = 0

    def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    canary = await asyncio.start_server(count, "127.0.0.2", 0)
    port = canary.sockets[0].getsockname()[1]
    try:
        merchant = merchant_id()
        endpoint = await http.post(
            "/v1/endpoints",
            json={"merchant_id": merchant, "url": "http://127.0.0.1:9/placeholder"},
            headers=ADMIN,
        )
        endpoint_id = endpoint.json()["id"]
        await pool.execute(
            "UPDATE endpoints SET url = $2 WHERE id = $1", endpoint_id, f"http://127.0.0.2:{port}/"
        )
        event_id = await pay(partner, merchant, "pay_ssrf")

        async def refused() -> str | None:
            error: str | None = await pool.fetchval(
                "SELECT a.error FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id"
                " WHERE d.event_id = $1 AND a.attempt = 1",
                event_id,
            )
            return error

        error = await wait_for(refused, what="the first attempt to be refused")
        assert error.startswith("destination refused (private address)")
        assert accepted == 0
    finally:
        canary.close()
        await canary.wait_closed()
