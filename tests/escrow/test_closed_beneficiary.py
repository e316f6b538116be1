"""A release refused for good by a step of the saga's own (a local activity: the beneficiary
wallet closed meanwhile) holds the escrow in release_failed with an alert, as a refusal by the
payout provider does; the operator's refund then returns every source."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from tests.escrow.support import (
    assert_release_refused_alert,
    balances,
    escrow_body,
    keyed,
    refund_held_escrow,
    wallets,
)

pytestmark = pytest.mark.usefixtures("pipeline")


async def test_a_closed_beneficiary_wallet_holds_the_escrow(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    merchant, (source, winner) = await wallets(http, pool, [30, 0])
    body = escrow_body(merchant, [(source, 30)], wallet=winner)
    escrow = (await http.post("/v1/escrows", json=body, headers=keyed())).json()
    assert escrow["status"] == "funded"
    await pool.execute("UPDATE wallets SET status = 'closed' WHERE id = $1", winner)

    held = await http.post(f"/v1/escrows/{escrow['id']}/release", json={}, headers=keyed())
    assert held.status_code == 200, held.text
    assert held.json()["status"] == "release_failed"
    assert "WalletClosed" in held.json()["transitions"][-1]["reason"]
    assert await balances(pool, [source, winner, escrow["id"]]) == [0, 0, 30]
    await assert_release_refused_alert(pool, escrow["id"])
    await refund_held_escrow(http, pool, escrow["id"], {source: 30})
