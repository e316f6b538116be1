"""Release to an external account through the payout provider (the real sink): the transfer
first, then the database; a transient failure is retried with the same key and pays once; a
refusal holds the escrow in release_failed with an alert, and an operator refunds it."""

from __future__ import annotations

import uuid

import asyncpg
import httpx
import pytest

from devstack.payout_sink import PayoutSink
from tests.escrow.support import (
    assert_conserved,
    assert_history,
    assert_release_refused_alert,
    balances,
    escrow_body,
    keyed,
    refund_held_escrow,
    wallets,
)

pytestmark = pytest.mark.usefixtures("pipeline")


async def test_release_to_an_external_account_pays_once(
    http: httpx.AsyncClient, pool: asyncpg.Pool, payout_sink: PayoutSink
) -> None:
    """Two 503s from the provider, then the transfer: paid once, escrow released, money out."""
    account = f"acct_{uuid.uuid4().hex[:8]}"
    merchant, (first, second) = await wallets(http, pool, [70, 30])
    body = escrow_body(merchant, [(first, 50), (second, 25)], account=account)
    escrow = (await http.post("/v1/escrows", json=body, headers=keyed())).json()
    assert escrow["status"] == "funded"
    payout_sink.fail_next(2)
    released = await http.post(f"/v1/escrows/{escrow['id']}/release", json={}, headers=keyed())
    assert released.status_code == 200, released.text
    assert released.json()["status"] == "released"
    transfers = payout_sink.transfers(f"escrow:{escrow['id']}:release")
    assert len(transfers) == 1
    assert released.json()["payout_transfer_id"] == transfers[0]["id"]
    assert payout_sink.balance(account, "EUR") == 75
    assert len(payout_sink.calls(f"escrow:{escrow['id']}:release")) == 3
    assert await balances(pool, [first, second, escrow["id"]]) == [20, 5, 0]
    await assert_history(
        pool, escrow["id"], ["created", "funding", "funded", "releasing", "released"]
    )
    await assert_conserved(pool)


async def test_a_refused_payout_holds_the_escrow_until_an_operator_refunds(
    http: httpx.AsyncClient, pool: asyncpg.Pool, payout_sink: PayoutSink
) -> None:
    """The provider refuses the account: nothing paid, nothing written but the hold and its
    alert; the operator's refund returns every source."""
    account = f"acct_{uuid.uuid4().hex[:8]}"
    payout_sink.refuse(account)
    merchant, (source,) = await wallets(http, pool, [40])
    body = escrow_body(merchant, [(source, 40)], account=account)
    escrow = (await http.post("/v1/escrows", json=body, headers=keyed())).json()
    held = await http.post(f"/v1/escrows/{escrow['id']}/release", json={}, headers=keyed())
    assert held.status_code == 200, held.text
    assert held.json()["status"] == "release_failed"
    assert payout_sink.balance(account, "EUR") == 0
    assert await balances(pool, [source, escrow["id"]]) == [0, 40]
    await assert_release_refused_alert(pool, escrow["id"])
    await refund_held_escrow(http, pool, escrow["id"], {source: 40})
