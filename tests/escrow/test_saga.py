"""The escrow saga end to end through the api: funding from two sources, release to a wallet,
refund, a failed funding compensated, wrong-state requests refused, every step audited and
published, money conserved."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import httpx
import pytest

from core.contracts import ESCROW_TRANSITIONS
from tests.escrow.support import (
    ADMIN,
    assert_conserved,
    assert_history,
    balances,
    escrow_body,
    keyed,
    wallets,
)
from tests.money_support import assert_books_balance

pytestmark = pytest.mark.usefixtures("pipeline")


@pytest.fixture(autouse=True)
async def books_balance(pool: asyncpg.Pool) -> AsyncIterator[None]:
    yield
    await assert_books_balance(pool)
    await assert_conserved(pool)


def test_the_migration_draws_the_escrow_transitions() -> None:
    """Migration 0007's frozen rows are exactly ESCROW_TRANSITIONS."""
    migration = importlib.import_module("migrations.versions.0007_escrows")
    assert sorted(migration.TRANSITIONS, key=str) == sorted(
        [(None if a is None else str(a), str(b)) for a, b in ESCROW_TRANSITIONS], key=str
    )


async def test_the_database_refuses_a_transition_not_drawn(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Raw SQL cannot skip funding: the trigger refuses created → funded."""
    merchant, (source, target) = await wallets(http, pool, [10, 0])
    created = await http.post(
        "/v1/escrows",
        json=escrow_body(merchant, [(source, 10)], wallet=target),
        headers=keyed(),
    )
    escrow_id = created.json()["id"]
    with pytest.raises(asyncpg.CheckViolationError, match="may not go from"):
        await pool.execute("UPDATE escrows SET status = 'released' WHERE id = $1", escrow_id)


async def test_two_sources_fund_then_release_to_a_wallet(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Both debits land in the escrow's holding account; release empties it into the winner's
    wallet; each of the five transitions is audited and published."""
    merchant, (first, second, winner) = await wallets(http, pool, [100, 50, 0])
    body = escrow_body(merchant, [(first, 60), (second, 30)], wallet=winner)
    created = await http.post("/v1/escrows", json=body, headers=keyed())
    assert created.status_code == 201, created.text
    escrow = created.json()
    assert escrow["status"] == "funded"
    assert escrow["amount"] == 90
    assert [s["debited"] for s in escrow["sources"]] == [True, True]
    assert await balances(pool, [first, second, escrow["id"]]) == [40, 20, 90]

    released = await http.post(
        f"/v1/escrows/{escrow['id']}/release", json={"reason": "winner drawn"}, headers=keyed()
    )
    assert released.status_code == 200, released.text
    assert released.json()["status"] == "released"
    assert await balances(pool, [first, second, winner, escrow["id"]]) == [40, 20, 90, 0]
    await assert_history(
        pool, escrow["id"], ["created", "funding", "funded", "releasing", "released"]
    )
    shown = await http.get(f"/v1/escrows/{escrow['id']}", headers=ADMIN)
    transitions = shown.json()["transitions"]
    assert transitions[-2]["reason"] == "winner drawn"
    assert transitions[-2]["actor"] == "api-key:bootstrap"


async def test_a_debit_that_fails_for_good_is_compensated(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """The second source holds too little: the first debit is returned, the escrow ends
    failed, every balance is what it was."""
    merchant, (rich, poor, winner) = await wallets(http, pool, [100, 10, 0])
    body = escrow_body(merchant, [(rich, 60), (poor, 30)], wallet=winner)
    created = await http.post("/v1/escrows", json=body, headers=keyed())
    assert created.status_code == 201, created.text
    escrow = created.json()
    assert escrow["status"] == "failed"
    by_wallet = {s["wallet_id"]: s for s in escrow["sources"]}
    assert (by_wallet[rich]["debited"], by_wallet[rich]["returned"]) == (True, True)
    assert by_wallet[poor]["debited"] is False
    assert await balances(pool, [rich, poor, winner, escrow["id"]]) == [100, 10, 0, 0]
    await assert_history(pool, escrow["id"], ["created", "funding", "failed"])
    assert "InsufficientFunds" in escrow["transitions"][-1]["reason"]


async def test_refund_then_wrong_state_requests_are_409(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """A refund returns every source; releasing or refunding it again is a 409 problem."""
    merchant, (first, second, winner) = await wallets(http, pool, [20, 20, 0])
    body = escrow_body(merchant, [(first, 15), (second, 5)], wallet=winner)
    escrow = (await http.post("/v1/escrows", json=body, headers=keyed())).json()
    assert escrow["status"] == "funded"
    refunded = await http.post(f"/v1/escrows/{escrow['id']}/refund", json={}, headers=keyed())
    assert refunded.status_code == 200, refunded.text
    assert refunded.json()["status"] == "refunded"
    assert await balances(pool, [first, second, winner, escrow["id"]]) == [20, 20, 0, 0]
    await assert_history(
        pool, escrow["id"], ["created", "funding", "funded", "refunding", "refunded"]
    )
    for action in ("release", "refund"):
        again = await http.post(f"/v1/escrows/{escrow['id']}/{action}", json={}, headers=keyed())
        assert again.status_code == 409, again.text
        assert again.headers["content-type"] == "application/problem+json"
        assert again.json()["type"] == "/problems/escrow-conflict"


async def test_an_expiry_that_is_not_in_the_future_is_refused(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """An escrow that would be funded only to be refunded at once is a 422 problem; nothing is
    created and nothing moves."""
    merchant, (source, winner) = await wallets(http, pool, [10, 0])
    body = escrow_body(merchant, [(source, 10)], wallet=winner, expires_in=timedelta(seconds=-1))
    refused = await http.post("/v1/escrows", json=body, headers=keyed())
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert "not in the future" in refused.json()["detail"]
    assert not await pool.fetchval("SELECT count(*) FROM escrows WHERE merchant_id = $1", merchant)
    assert await balances(pool, [source, winner]) == [10, 0]


async def test_the_workflow_validator_refuses_a_second_release(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Two releases at once: one releases, the other is refused (409) by the escrow itself."""
    merchant, (source, winner) = await wallets(http, pool, [10, 0])
    body = escrow_body(merchant, [(source, 10)], wallet=winner)
    escrow = (await http.post("/v1/escrows", json=body, headers=keyed())).json()
    url = f"/v1/escrows/{escrow['id']}/release"
    answers = await asyncio.gather(*(http.post(url, json={}, headers=keyed()) for _ in range(5)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 409, 409, 409, 409], [a.text for a in answers]
    assert {a.json()["type"] for a in answers if a.status_code == 409} == {
        "/problems/escrow-conflict"
    }
    assert await balances(pool, [winner]) == [10]


async def test_list_filters_by_merchant_and_status(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    merchant, (source, winner) = await wallets(http, pool, [10, 0])
    body = escrow_body(merchant, [(source, 10)], wallet=winner)
    escrow = (await http.post("/v1/escrows", json=body, headers=keyed())).json()
    listed = await http.get(
        "/v1/escrows", params={"merchant_id": merchant, "status": "funded"}, headers=ADMIN
    )
    assert [e["id"] for e in listed.json()["escrows"]] == [escrow["id"]]
    none = await http.get(
        "/v1/escrows", params={"merchant_id": merchant, "status": "released"}, headers=ADMIN
    )
    assert none.json()["escrows"] == []
