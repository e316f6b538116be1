"""A refund whose payment never comes is parked after the dependency window (time-skipping),
raises an alert, and applies once replayed after its payment arrived."""

from __future__ import annotations

from datetime import timedelta

from temporalio.testing import WorkflowEnvironment

from core.contracts import INBOX_CHANNEL, webhook_workflow_id
from core.settings import Settings
from tests.support import (
    status_of,
    time_skipping_stack,
    wait_for,
    wait_for_status,
    wait_settled,
)

ADMIN = {"authorization": "Bearer sb_dev_admin_key"}


async def test_refund_without_payment_is_parked_then_replayed(
    time_skipping: WorkflowEnvironment, postgres_admin_url: str, settings: Settings
) -> None:
    """After the 1 h window the refund is a dead letter with an alert; a replay applies it."""
    async with time_skipping_stack(time_skipping, postgres_admin_url, settings) as (
        pool,
        http,
        partner,
    ):
        common = {"payment_id": "pay_late", "merchant_id": "m_late", "currency": "EUR"}
        body = partner.envelope("refund.succeeded", refund_id="re_1", amount=100, **common)
        response = await partner.post(body, webhook_id="msg_refund")
        refund = response.json()["event_id"]
        workflow_id = webhook_workflow_id(partner.id, "msg_refund")
        handle = time_skipping.client.get_workflow_handle(workflow_id)
        await wait_for_status(pool, refund, "waiting")
        # The window elapses in virtual time: the dev server would take an hour.
        await time_skipping.sleep(timedelta(hours=1, seconds=1))
        assert await handle.result() == "dead_lettered"
        history = await handle.fetch_history()
        timers = [e for e in history.events if e.HasField("timer_started_event_attributes")]
        assert len(timers) == 1
        fired = timers[0].timer_started_event_attributes.start_to_fire_timeout.ToSeconds()
        assert fired == 3600
        dead = await pool.fetchrow("SELECT reason FROM dead_letters WHERE event_id = $1", refund)
        assert dead is not None
        assert dead["reason"] == "payment never arrived: pay_late"
        alert = await pool.fetchrow(
            "SELECT kind, status FROM alerts WHERE dedup_key = $1", f"dead_letter:{refund}"
        )
        assert alert is not None
        assert dict(alert) == {"kind": "refund_without_payment", "status": "open"}

        listed = await http.get("/v1/dead-letters", headers=ADMIN)
        assert [d["event_id"] for d in listed.json()] == [refund]
        payment = await partner.send("payment.succeeded", amount=1000, **common)
        await wait_settled(pool, [payment])
        replayed = await http.post(f"/v1/dead-letters/{refund}/replay", headers=ADMIN)
        assert replayed.status_code == 200, replayed.text
        replay_handle = time_skipping.client.get_workflow_handle(f"{workflow_id}:replay-1")

        async def replay_started() -> bool:
            return bool(
                await pool.fetchval(
                    "SELECT workflow_started_at IS NOT NULL FROM webhooks WHERE event_id = $1",
                    refund,
                )
            )

        await wait_for(replay_started, what="the replay to start")
        assert await replay_handle.result() == "applied"
        refunded = await pool.fetchval(
            "SELECT refunded_amount FROM payments WHERE payment_id = 'pay_late'"
        )
        assert refunded == 100
        audit = await pool.fetch(
            "SELECT from_state, to_state FROM audit_log WHERE entity_type = 'webhook'"
            " AND event_id = $1 ORDER BY id",
            refund,
        )
        assert [(r["from_state"], r["to_state"]) for r in audit] == [
            ("waiting", "dead_lettered"),
            ("dead_lettered", "received"),
        ]
        assert (await http.get("/v1/dead-letters", headers=ADMIN)).json() == []


async def test_refund_keeps_waiting_while_its_payment_is_queued(
    time_skipping: WorkflowEnvironment, postgres_admin_url: str, settings: Settings
) -> None:
    """Past the window, a refund whose payment was received but not yet applied is not parked."""
    async with time_skipping_stack(time_skipping, postgres_admin_url, settings) as (
        pool,
        _,
        partner,
    ):
        common = {"payment_id": "pay_q", "merchant_id": "m_q", "currency": "EUR"}
        refund = await partner.send(
            "refund.succeeded", webhook_id="msg_r", refund_id="re_q", amount=100, **common
        )
        await wait_for_status(pool, refund, "waiting")
        # The payment is received but the relay is far behind: its row is recorded, not started.
        payment = "evt_queued_payment"
        envelope = {"type": "payment.succeeded", "data": {"amount": 1000, **common}}
        await pool.execute(
            "INSERT INTO webhooks (event_id, partner_id, webhook_id, body_sha256, event_type,"
            " entity_key, merchant_id, priority, payload, received_at, relay_lease_until)"
            " VALUES ($1, $2, 'msg_p', '', 'payment.succeeded', 'payment:pay_q', 'm_q', 1, $3,"
            " now(), 'infinity')",
            payment,
            partner.id,
            envelope,
        )
        await time_skipping.sleep(timedelta(hours=1, minutes=5))
        assert await status_of(pool, refund) == "waiting"
        assert not await pool.fetchval("SELECT count(*) FROM dead_letters")
        await pool.execute(
            "UPDATE webhooks SET relay_lease_until = NULL WHERE event_id = $1", payment
        )
        await pool.execute("SELECT pg_notify($1, '')", INBOX_CHANNEL)
        handle = time_skipping.client.get_workflow_handle(webhook_workflow_id(partner.id, "msg_r"))
        assert await handle.result() == "applied"
        assert await status_of(pool, payment) == "processed"
