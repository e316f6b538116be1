"""An escrow nobody releases is refunded when it expires, on a durable timer (time-skipping)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.testing import WorkflowEnvironment

from core.contracts import escrow_workflow_id
from core.settings import Settings
from tests.escrow.support import assert_conserved, assert_history, balances, escrow_body, keyed
from tests.money_support import new_merchant
from tests.support import time_skipping_stack


async def test_an_escrow_expires_into_a_refund(
    time_skipping: WorkflowEnvironment, postgres_admin_url: str, settings: Settings
) -> None:
    """Funded, then 30 days pass in virtual time: refunded by the saga itself, every source
    whole again."""
    async with time_skipping_stack(time_skipping, postgres_admin_url, settings) as (
        pool,
        http,
        _,
    ):
        merchant = await new_merchant(pool)
        opened = []
        for amount in (30, 0):
            wallet = await http.post(
                "/v1/wallets", json={"merchant_id": merchant, "currency": "EUR"}, headers=keyed()
            )
            opened.append(wallet.json()["id"])
            if amount:
                await http.post(
                    f"/v1/wallets/{opened[-1]}/top-ups", json={"amount": amount}, headers=keyed()
                )
        source, winner = opened
        body = escrow_body(merchant, [(source, 25)], wallet=winner, expires_in=timedelta(days=30))
        created = await http.post("/v1/escrows", json=body, headers=keyed())
        assert created.json()["status"] == "funded", created.text
        escrow_id = created.json()["id"]
        assert await balances(pool, [source, escrow_id]) == [5, 25]
        handle = time_skipping.client.get_workflow_handle(escrow_workflow_id(escrow_id))
        # Thirty days pass in virtual time: the dev server would take a month.
        await time_skipping.sleep(timedelta(days=30, seconds=1))
        assert await handle.result() == "refunded"
        assert await balances(pool, [source, winner, escrow_id]) == [30, 0, 0]
        await assert_history(
            pool, escrow_id, ["created", "funding", "funded", "refunding", "refunded"]
        )
        expired = await pool.fetchrow(
            "SELECT actor, reason FROM audit_log WHERE entity_type = 'escrow' AND entity_id = $1"
            " AND to_state = 'refunding'",
            escrow_id,
        )
        assert expired is not None
        assert dict(expired) == {"actor": "switchboard", "reason": "expired"}
        timers = [
            e
            for e in (await handle.fetch_history()).events
            if e.HasField("timer_started_event_attributes")
        ]
        assert len(timers) == 1
        await assert_conserved(pool)
