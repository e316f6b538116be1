"""Wallets over the operator API (RELIABILITY §4): Stripe idempotency (P1), a contended wallet
(P2), opposite transfers (P5), and statements that reconcile with balances. After every test,
the books balance (:func:`tests.money_support.assert_books_balance`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from core.settings import DEV_ADMIN_API_KEY, Settings
from tests.money_support import assert_books_balance, new_merchant
from tests.support import wait_for

ADMIN = {"authorization": f"Bearer {DEV_ADMIN_API_KEY}"}
RETRIES = 2000
"""Bound on a client's immediate retries of a 409 in-flight answer."""


@pytest.fixture(autouse=True)
async def books_balance(pool: asyncpg.Pool) -> AsyncIterator[None]:
    yield
    await assert_books_balance(pool)


def keyed(key: str | None = None) -> dict[str, str]:
    return {**ADMIN, "Idempotency-Key": key or str(uuid.uuid4())}


async def open_wallet(http: httpx.AsyncClient, merchant: str, currency: str = "EUR") -> str:
    response = await http.post(
        "/v1/wallets", json={"merchant_id": merchant, "currency": currency}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    wallet_id: str = response.json()["id"]
    return wallet_id


async def funded(http: httpx.AsyncClient, pool: asyncpg.Pool, amounts: list[int]) -> list[str]:
    """Wallets of one new merchant holding ``amounts``."""
    merchant = await new_merchant(pool)
    wallets = [await open_wallet(http, merchant) for _ in amounts]
    for wallet, amount in zip(wallets, amounts, strict=True):
        if amount:
            response = await http.post(
                f"/v1/wallets/{wallet}/top-ups", json={"amount": amount}, headers=keyed()
            )
            assert response.status_code == 201, response.text
    return wallets


async def balance(http: httpx.AsyncClient, wallet: str) -> int:
    response = await http.get(f"/v1/wallets/{wallet}", headers=ADMIN)
    assert response.status_code == 200, response.text
    amount: int = response.json()["balance"]
    return amount


async def transfer(
    http: httpx.AsyncClient, source: str, target: str, amount: int, key: str | None = None
) -> httpx.Response:
    return await http.post(
        "/v1/transfers",
        json={"from_wallet": source, "to_wallet": target, "amount": amount},
        headers=keyed(key),
    )


async def until_answered(send: Any) -> httpx.Response:
    """Send until the answer is not 'still running' (a client honouring the 409's advice)."""
    for _ in range(RETRIES):
        response: httpx.Response = await send()
        if response.status_code != 409 or not _in_use(response):
            return response
        assert response.headers["retry-after"] == "1"
    raise AssertionError(f"still running after {RETRIES} retries")


def _in_use(response: httpx.Response) -> bool:
    return bool(response.json()["type"] == "/problems/idempotency-key-in-use")


async def ledger_transactions(pool: asyncpg.Pool, key: str) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM ledger_transactions WHERE idempotency_key = $1", f"request:{key}"
    )
    return count


async def test_p1_fifty_concurrent_requests_with_one_key_run_once(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """One execution; all 50 clients get the same response, 49 of them replayed."""
    (wallet,) = await funded(http, pool, [0])
    key = str(uuid.uuid4())

    def send() -> Any:
        return http.post(f"/v1/wallets/{wallet}/top-ups", json={"amount": 7}, headers=keyed(key))

    responses = await asyncio.gather(*(until_answered(send) for _ in range(50)))
    assert {r.status_code for r in responses} == {201}
    assert len({r.text for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 49
    assert responses[0].json()["postings"] == [
        {"account_id": wallet, "amount": 7, "balance_after": 7},
        {"account_id": "world:EUR", "amount": -7, "balance_after": None},
    ]
    assert await balance(http, wallet) == 7
    assert await ledger_transactions(pool, key) == 1
    audited = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE entity_type = 'ledger_transaction'"
        " AND entity_id = $1",
        str(responses[0].json()["id"]),
    )
    assert audited == 1


async def test_p1_a_key_with_other_parameters_is_refused_and_runs_nothing(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Same key, other amount, path or API key: 422, and the first answer stays the answer."""
    source, target = await funded(http, pool, [10, 0])
    key = str(uuid.uuid4())
    first = await transfer(http, source, target, 3, key)
    assert first.status_code == 201, first.text
    other_key = (
        await http.post("/v1/api-keys", json={"name": "other", "scopes": ["admin"]}, headers=ADMIN)
    ).json()["key"]
    refused = [
        await transfer(http, source, target, 4, key),
        await transfer(http, target, source, 3, key),
        await http.post(f"/v1/wallets/{source}/top-ups", json={"amount": 3}, headers=keyed(key)),
        await http.post(
            "/v1/transfers",
            json={"from_wallet": source, "to_wallet": target, "amount": 3},
            headers={"authorization": f"Bearer {other_key}", "Idempotency-Key": key},
        ),
    ]
    for response in refused:
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "/problems/idempotency-key-reused"
    again = await transfer(http, source, target, 3, key)
    assert (again.status_code, again.text) == (201, first.text)
    assert await balance(http, source) == 7
    assert await ledger_transactions(pool, key) == 1


async def test_p1_a_repeat_in_flight_gets_409_then_the_stored_answer(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """While the first request waits on its wallet, a repeat is told to retry (409, nothing
    stored for it); once the first is done, the repeat gets its answer."""
    (wallet,) = await funded(http, pool, [0])
    key = str(uuid.uuid4())
    async with pool.acquire() as blocker:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("SELECT 1 FROM ledger_accounts WHERE id = $1 FOR UPDATE", wallet)
        first = asyncio.create_task(
            http.post(f"/v1/wallets/{wallet}/top-ups", json={"amount": 5}, headers=keyed(key))
        )

        async def claimed() -> bool:
            status = await pool.fetchval("SELECT status FROM idempotency_keys WHERE key = $1", key)
            return bool(status == "running")

        await wait_for(claimed, timeout=10, what="the first request to claim its key")
        repeat = await http.post(
            f"/v1/wallets/{wallet}/top-ups", json={"amount": 5}, headers=keyed(key)
        )
        assert repeat.status_code == 409, repeat.text
        assert _in_use(repeat) and repeat.headers["retry-after"] == "1"
        await blocking.rollback()
    answer = await first
    assert answer.status_code == 201, answer.text
    replayed = await http.post(
        f"/v1/wallets/{wallet}/top-ups", json={"amount": 5}, headers=keyed(key)
    )
    assert (replayed.status_code, replayed.text) == (201, answer.text)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert await balance(http, wallet) == 5


async def test_p1_refusals_are_answers_and_expired_keys_still_move_money_once(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """An insufficient-funds answer is replayed for its key; after the key expires (and is
    purged) a repeat runs again, but the ledger's key keeps the movement single."""
    source, target = await funded(http, pool, [1, 0])
    poor = str(uuid.uuid4())
    refused = await transfer(http, source, target, 2, poor)
    assert refused.status_code == 409
    assert refused.json()["type"] == "/problems/insufficient-funds"
    await http.post(f"/v1/wallets/{source}/top-ups", json={"amount": 5}, headers=keyed())
    assert (await transfer(http, source, target, 2, poor)).text == refused.text
    key = str(uuid.uuid4())
    first = await transfer(http, source, target, 2, key)
    await pool.execute(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"
        " WHERE key = ANY($1::text[])",
        [key, poor],
    )
    await transfer(http, source, target, 1)  # a new key's claim purges expired ones
    assert not await pool.fetchval(
        "SELECT count(*) FROM idempotency_keys WHERE key = ANY($1::text[])", [key, poor]
    )
    again = await transfer(http, source, target, 2, key)
    assert again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert await ledger_transactions(pool, key) == 1
    assert await balance(http, target) == 3


@pytest.mark.parametrize(("debits", "amount", "succeed"), [(200, 1, 100), (20, 10, 10)])
async def test_p2_concurrent_debits_of_a_wallet_of_100(
    http: httpx.AsyncClient, pool: asyncpg.Pool, debits: int, amount: int, succeed: int
) -> None:
    """Exactly the debits the balance covers succeed; every other is a clean
    insufficient-funds problem; no read ever sees a negative balance; the wallet ends at 0."""
    source, target = await funded(http, pool, [100, 0])
    done = asyncio.Event()
    seen: list[int] = []

    async def watch() -> None:
        for _ in range(100_000):
            seen.append(await balance(http, source))
            if done.is_set():
                return

    watcher = asyncio.create_task(watch())
    try:
        responses = await asyncio.gather(
            *(transfer(http, source, target, amount) for _ in range(debits))
        )
    finally:
        done.set()
        await watcher
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == succeed
    refusals = [r for r in responses if r.status_code != 201]
    assert len(refusals) == debits - succeed
    for response in refusals:
        assert response.status_code == 409, response.text
        assert response.json()["type"] == "/problems/insufficient-funds"
    assert seen and min(seen) >= 0
    assert await balance(http, source) == 0
    assert await balance(http, target) == 100


P5_CONNECTIONS: int = Settings.model_fields["database_pool_size"].default
"""The P5 client's connections: as many as the api's database pool. Every transfer locks the
same two accounts, so they commit one at a time, each holding the locks until its coroutine is
resumed for the commit; requests beyond the pool only wait inside the api, where on a loaded
machine the extra ready work delays those resumptions and so every lock hold (measured at load
6 on 2 cores: 33 transfers/s and none late over 10 connections, 21/s over 20, 13/s with read
timeouts and a 503 from a lock wait over httpx's default 100)."""


async def test_p5_a_thousand_opposite_transfers_neither_hang_nor_deadlock(
    api_url: str, pool: asyncpg.Pool
) -> None:
    """500 A→B and 500 B→A sent at once: each is answered within the read timeout once sent,
    all succeed (no deadlock or timeout reaches the client) within the overall bound, money is
    conserved."""
    # The client's own queue for a connection is not the api's latency: only the overall
    # bound limits it.
    async with httpx.AsyncClient(
        base_url=api_url,
        timeout=httpx.Timeout(30, pool=None),
        limits=httpx.Limits(max_connections=P5_CONNECTIONS),
    ) as http:
        a, b = await funded(http, pool, [1000, 1000])
        async with asyncio.timeout(120):
            responses = await asyncio.gather(
                *(transfer(http, *((a, b) if i % 2 else (b, a)), 1 + i % 3) for i in range(1000))
            )
        assert {r.status_code for r in responses} == {201}, {r.text for r in responses}
        assert await balance(http, a) + await balance(http, b) == 2000


async def test_the_statement_reconciles_with_the_balance(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Postings page by page, each with the balance it left; they add up to the balance."""
    a, b = await funded(http, pool, [50, 0])
    for amount in (1, 2, 3, 4):
        assert (await transfer(http, a, b, amount)).status_code == 201
    entries: list[dict[str, Any]] = []
    after = 0
    for _ in range(10):
        page = await http.get(
            f"/v1/wallets/{a}/statement", params={"after": after, "limit": 2}, headers=ADMIN
        )
        assert page.status_code == 200, page.text
        entries += page.json()["entries"]
        if not page.json()["has_more"]:
            break
        after = entries[-1]["posting_id"]
    assert [e["amount"] for e in entries] == [50, -1, -2, -3, -4]
    assert [e["balance_after"] for e in entries] == [50, 49, 47, 44, 40]
    assert entries[0]["counterparties"] == ["world:EUR"]
    assert entries[1]["counterparties"] == [b]
    assert page.json()["wallet"]["balance"] == sum(e["amount"] for e in entries) == 40


async def test_wallet_requests_are_refused_as_problems(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Unknown merchant or wallet 404; no key, other currency, same wallet: refused, as
    problems; a wallet opened with a key is opened once."""
    missing = await http.post(
        "/v1/wallets", json={"merchant_id": "m-nobody-here", "currency": "EUR"}, headers=ADMIN
    )
    assert missing.status_code == 404
    merchant = await new_merchant(pool)
    key = str(uuid.uuid4())
    opened = [
        await http.post(
            "/v1/wallets", json={"merchant_id": merchant, "currency": "USD"}, headers=keyed(key)
        )
        for _ in range(2)
    ]
    assert opened[0].text == opened[1].text and opened[0].status_code == 201
    dollars = opened[0].json()["id"]
    (euros,) = await funded(http, pool, [10])
    unknown = f"wal_{uuid.uuid4().hex}"
    assert (await http.get(f"/v1/wallets/{unknown}", headers=ADMIN)).status_code == 404
    assert (await transfer(http, euros, unknown, 1)).status_code == 404
    no_key = await http.post(
        "/v1/transfers",
        json={"from_wallet": euros, "to_wallet": dollars, "amount": 1},
        headers=ADMIN,
    )
    assert no_key.status_code == 422
    mismatch = await transfer(http, euros, dollars, 1)
    assert mismatch.status_code == 409
    assert mismatch.json()["type"] == "/problems/currency-mismatch"
    assert (await transfer(http, euros, euros, 1)).status_code == 422
    assert await balance(http, euros) == 10
