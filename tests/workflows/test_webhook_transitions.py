"""Every status change webhook rows really make, on every path through the pipeline, is one
``WEBHOOK_TRANSITIONS`` draws, and so is every webhook transition in the audit log.

A trigger in the test's own database records each status change as it is written (the audit log
keeps only the operator-relevant ones: parking and replay), while the real api, relays and
workflows take webhooks down each path: applied, waiting then woken, waiting then parked after
the window (virtual time) and replayed, ignored, poison, and parked for an unlinked merchant
then replayed by linking it.
"""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise

from temporalio.testing import WorkflowEnvironment

from core.contracts import WEBHOOK_TRANSITIONS, WebhookStatus, webhook_workflow_id
from core.settings import Settings
from tests.e2e.test_poison import FAILING_PAYMENTS
from tests.support import (
    add_partner,
    record_status_changes,
    status_histories,
    time_skipping_stack,
    wait_for_status,
    wait_settled,
)

ADMIN = {"authorization": "Bearer sb_dev_admin_key"}


async def test_every_webhook_transition_is_drawn(
    time_skipping: WorkflowEnvironment, postgres_admin_url: str, settings: Settings
) -> None:
    """Each row's recorded history starts at creation, chains, and uses only drawn moves."""
    async with time_skipping_stack(time_skipping, postgres_admin_url, settings) as (
        pool,
        http,
        partner,
    ):
        await record_status_changes(pool, "webhooks", "event_id")
        await pool.execute(FAILING_PAYMENTS)
        merchant = {"merchant_id": "m_states", "currency": "EUR"}
        paid = await partner.send("payment.succeeded", payment_id="pay_1", amount=900, **merchant)
        woken = await partner.send(
            "refund.succeeded", refund_id="re_w", payment_id="pay_2", amount=10, **merchant
        )
        await wait_for_status(pool, woken, WebhookStatus.WAITING)
        late = await partner.send("payment.succeeded", payment_id="pay_2", amount=50, **merchant)
        ignored = await partner.send("dispute.created", dispute_id="dp_1", merchant_id="m_states")
        poison = await partner.send(
            "payment.succeeded", payment_id="pay_p", merchant_id="22003-m", amount=1, currency="EUR"
        )
        intruder = await add_partner(pool, http, onboarding=False)
        unlinked = await intruder.send(
            "payment.succeeded", payment_id="pay_u", amount=5, **merchant
        )
        orphan = await partner.send(
            "refund.succeeded",
            webhook_id="msg_orphan",
            refund_id="re_o",
            payment_id="pay_o",
            amount=10,
            **merchant,
        )
        assert await wait_settled(pool, [paid, woken, late, ignored, poison, unlinked]) == {
            paid: "processed",
            woken: "processed",
            late: "processed",
            ignored: "ignored",
            poison: "dead_lettered",
            unlinked: "dead_lettered",
        }
        await wait_for_status(pool, orphan, WebhookStatus.WAITING)
        await time_skipping.sleep(timedelta(hours=1, seconds=1))
        orphan_run = time_skipping.client.get_workflow_handle(
            webhook_workflow_id(partner.id, "msg_orphan")
        )
        assert await orphan_run.result() == "dead_lettered"

        linked = await http.put(f"/v1/merchants/m_states/partners/{intruder.id}", headers=ADMIN)
        assert linked.json()["replayed"] == [unlinked]
        await partner.send("payment.succeeded", payment_id="pay_o", amount=50, **merchant)
        replayed = await http.post(f"/v1/dead-letters/{orphan}/replay", headers=ADMIN)
        assert replayed.status_code == 200, replayed.text
        for event_id in (unlinked, orphan):
            await wait_for_status(pool, event_id, WebhookStatus.PROCESSED)

        histories = await status_histories(pool, "webhooks")
        audited = await pool.fetch(
            "SELECT event_id, from_state, to_state FROM audit_log WHERE entity_type = $1"
            " ORDER BY id",
            WEBHOOK_TRANSITIONS.entity,
        )

    for event_id, history in histories.items():
        assert history[0] == (None, WEBHOOK_TRANSITIONS.initial), (event_id, history)
        for (_, before), (after_from, _) in pairwise(history):
            assert before == after_from, (event_id, history)
        for old, new in history:
            assert WEBHOOK_TRANSITIONS.allows(old, new), (event_id, old, new)
    seen = {move for history in histories.values() for move in history}
    assert {
        (WebhookStatus.WAITING, WebhookStatus.PROCESSED),
        (WebhookStatus.WAITING, WebhookStatus.DEAD_LETTERED),
        (WebhookStatus.DEAD_LETTERED, WebhookStatus.RECEIVED),
    } <= seen
    assert {new for _, new in seen} == set(WebhookStatus)

    assert audited, "parking and replay are audited"
    for row in audited:
        move = (row["from_state"], row["to_state"])
        assert WEBHOOK_TRANSITIONS.allows(*move), (row["event_id"], move)
        assert move in histories[row["event_id"]], (row["event_id"], move)
