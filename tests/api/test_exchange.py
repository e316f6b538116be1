"""Exchange requests over the operator API: the claim race (50 operators, one winner per request),
working a request through its states with its timeline, idempotent create, per-customer rate
limit."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import asyncpg
import httpx

from api.exchange import RATE_WINDOW_SECONDS
from core.settings import Settings
from tests.exchange.support import ADMIN, create_request, keyed, operators, request_body
from tests.money_support import new_merchant

CLAIMERS = 50
REQUESTS = 100
RACE_SECONDS = 120
"""Bound on the whole race: 5,000 claims on two cores."""


async def test_of_fifty_simultaneous_claimers_exactly_one_wins(
    http: httpx.AsyncClient, api_url: str, pool: asyncpg.Pool
) -> None:
    """50 operators claim each of 100 requests at once: one 200 per request, 49 clean 409s
    naming the winner, never a 5xx; the audit log has one claim per request."""
    merchant = await new_merchant(pool)
    desk = await operators(pool, CLAIMERS)
    requests = [(await create_request(http, merchant))["id"] for _ in range(REQUESTS)]
    limits = httpx.Limits(max_connections=CLAIMERS * 2, max_keepalive_connections=CLAIMERS * 2)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=api_url, timeout=60, limits=limits) as client:

        async def race(request_id: str) -> list[tuple[str, httpx.Response]]:
            answers = await asyncio.gather(
                *(
                    client.post(f"/v1/exchange-requests/{request_id}/claim", headers=headers)
                    for _, headers in desk
                )
            )
            return [(actor, answer) for (actor, _), answer in zip(desk, answers, strict=True)]

        results = []
        async with asyncio.timeout(RACE_SECONDS):
            # Requests race one after another (each with all its claimers at once), so the client
            # never queues more claims than it has connections.
            for request_id in requests:
                results.append(await race(request_id))
    elapsed = time.monotonic() - started
    statuses: Counter[int] = Counter()
    for request_id, answers in zip(requests, results, strict=True):
        statuses.update(answer.status_code for _, answer in answers)
        winners = [(actor, a) for actor, a in answers if a.status_code == 200]
        assert len(winners) == 1, [a.text for _, a in answers if a.status_code != 409]
        winner, won = winners[0]
        assert won.json()["assignee"] == winner
        for actor, lost in answers:
            if actor == winner:
                continue
            assert lost.status_code == 409, lost.text
            assert lost.headers["content-type"] == "application/problem+json"
            problem = lost.json()
            assert problem["type"] == "/problems/exchange-request-conflict"
            assert problem["assignee"] == winner
            assert winner in problem["detail"]
        claims = await pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE entity_type = 'exchange_request'"
            " AND entity_id = $1 AND to_state = 'assigned'",
            request_id,
        )
        assert claims == 1
    assert statuses == {200: REQUESTS, 409: REQUESTS * (CLAIMERS - 1)}, (statuses, elapsed)


async def test_a_request_is_worked_through_its_states(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Only the assignee advances or releases; an admin reassigns; the timeline shows who moved
    it where and why; a finished request moves no more."""
    merchant = await new_merchant(pool)
    (alice, as_alice), (bob, as_bob) = await operators(pool, 2)
    request = await create_request(http, merchant, quote=99)
    assert (request["status"], request["assignee"], request["quote"]) == ("pending", None, 99)
    base = f"/v1/exchange-requests/{request['id']}"

    assert (await http.post(f"{base}/claim", headers=as_alice)).json()["assignee"] == alice
    refused = await http.post(f"{base}/advance", json={"to": "processing"}, headers=as_bob)
    assert refused.status_code == 409 and refused.json()["assignee"] == alice
    released = await http.post(f"{base}/release", json={"reason": "lunch"}, headers=as_alice)
    assert released.json()["status"] == "pending" and released.json()["assignee"] is None
    assert (await http.post(f"{base}/claim", headers=as_bob)).status_code == 200
    not_admin = await http.post(f"{base}/reassign", json={"assignee": alice}, headers=as_bob)
    assert not_admin.status_code == 403
    moved = await http.post(
        f"{base}/reassign", json={"assignee": alice, "reason": "bob is off"}, headers=ADMIN
    )
    assert moved.json()["assignee"] == alice
    for to in ("processing", "completed"):
        step = await http.post(f"{base}/advance", json={"to": to, "reason": to}, headers=as_alice)
        assert step.status_code == 200 and step.json()["status"] == to, step.text
    late = await http.post(f"{base}/cancel", headers=ADMIN)
    assert late.status_code == 409 and late.json()["request_status"] == "completed"

    shown = (await http.get(base, headers=as_bob)).json()
    path = [(s["from_state"], s["to_state"], s["actor"]) for s in shown["timeline"]]
    assert path == [
        (None, "created", "api-key:bootstrap"),
        ("created", "pending", "api-key:bootstrap"),
        ("pending", "assigned", alice),
        ("assigned", "pending", alice),
        ("pending", "assigned", bob),
        ("assigned", "assigned", "api-key:bootstrap"),
        ("assigned", "processing", alice),
        ("processing", "completed", alice),
    ]
    assert shown["version"] == len(path)
    assert shown["timeline"][3]["reason"] == "lunch"
    mine = await http.get(
        "/v1/exchange-requests", params={"assignee": alice, "status": "completed"}, headers=ADMIN
    )
    assert [r["id"] for r in mine.json()["items"]] == [request["id"]]
    missing = await http.post(f"/v1/exchange-requests/exr_{uuid.uuid4().hex}/claim", headers=ADMIN)
    assert missing.status_code == 404


async def test_create_is_idempotent(http: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    """The same key and body create one request (the repeat replays it); the same key with
    another body is a 422; a request without a key is refused."""
    merchant = await new_merchant(pool)
    sent = request_body(merchant)
    key = str(uuid.uuid4())
    first, again = [
        await http.post("/v1/exchange-requests", json=sent, headers=keyed(ADMIN, key))
        for _ in range(2)
    ]
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    other = await http.post(
        "/v1/exchange-requests", json={**sent, "from_amount": 1}, headers=keyed(ADMIN, key)
    )
    assert other.status_code == 422
    assert other.json()["type"] == "/problems/idempotency-key-reused"
    keyless = await http.post("/v1/exchange-requests", json=sent, headers=ADMIN)
    assert keyless.status_code == 422
    listed = await http.get(
        "/v1/exchange-requests", params={"customer_id": sent["customer_id"]}, headers=ADMIN
    )
    assert [r["id"] for r in listed.json()["items"]] == [first.json()["id"]]


async def test_each_customer_is_rate_limited(
    http: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    """A customer's requests beyond the limit in one minute are 429 problems with Retry-After;
    another customer is not affected."""
    merchant = await new_merchant(pool)
    limit = settings.exchange_rate_limit_per_minute
    customer = f"c-{uuid.uuid4().hex[:10]}"
    window = int(time.time()) // RATE_WINDOW_SECONDS
    answers = [
        await http.post(
            "/v1/exchange-requests", json=request_body(merchant, customer), headers=keyed(ADMIN)
        )
        for _ in range(2 * limit + 1)
    ]
    same_window = int(time.time()) // RATE_WINDOW_SECONDS == window
    accepted = [a for a in answers if a.status_code == 201]
    limited = [a for a in answers if a.status_code == 429]
    assert len(accepted) + len(limited) == len(answers)
    # Fixed one-minute windows: all in one window admit exactly the limit; straddling two, at
    # most twice that.
    assert len(accepted) == limit if same_window else limit <= len(accepted) <= 2 * limit
    assert answers[limit].status_code == 429 or not same_window
    for answer in limited:
        assert answer.headers["content-type"] == "application/problem+json"
        assert 1 <= int(answer.headers["retry-after"]) <= RATE_WINDOW_SECONDS
        assert answer.json()["type"] == "/problems/rate-limited"
    assert (await create_request(http, merchant))["status"] == "pending"
