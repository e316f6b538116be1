"""Per-entity ordering and dependencies, through the whole pipeline on real servers.

Events of one payment take effect in arrival order; a refund that arrives before its payment
waits for it; refunds never exceed what is left; balances are last-writer-wins by ``as_of``.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.support import Partner, wait_for_status, wait_settled

pytestmark = pytest.mark.usefixtures("pipeline")


def merchant() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


async def payment_row(pool: asyncpg.Pool, partner: Partner, payment_id: str) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT * FROM payments WHERE partner_id = $1 AND payment_id = $2", partner.id, payment_id
    )
    assert row is not None
    return row


async def seqs_by_event(pool: asyncpg.Pool, merchant_id: str) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT event_id, seq FROM events WHERE merchant_id = $1 ORDER BY seq", merchant_id
    )
    return {row["event_id"]: row["seq"] for row in rows}


async def test_refund_that_arrives_first_waits_for_its_payment(
    partner: Partner, pool: asyncpg.Pool
) -> None:
    """A refund sent before its payment waits, then applies after it, in that seq order."""
    m = merchant()
    refund = await partner.send(
        "refund.succeeded",
        refund_id="re_1",
        payment_id="pay_1",
        merchant_id=m,
        amount=300,
        currency="EUR",
    )
    await wait_for_status(pool, refund, "waiting")
    payment = await partner.send(
        "payment.succeeded", payment_id="pay_1", merchant_id=m, amount=1000, currency="EUR"
    )
    assert await wait_settled(pool, [refund, payment]) == {
        refund: "processed",
        payment: "processed",
    }
    row = await payment_row(pool, partner, "pay_1")
    assert (row["status"], row["refunded_amount"]) == ("partially_refunded", 300)
    seqs = await seqs_by_event(pool, m)
    assert seqs[payment] < seqs[refund]


async def test_shuffled_streams_reach_the_right_final_state(
    partner: Partner, pool: asyncpg.Pool
) -> None:
    """Ten payments, each with two refunds, sent interleaved in a seeded random order."""
    rng = random.Random(20261122)
    m = merchant()
    events: list[tuple[str, dict[str, Any]]] = []
    for n in range(10):
        payment_id = f"pay_{n}"
        common: dict[str, Any] = {"payment_id": payment_id, "merchant_id": m, "currency": "EUR"}
        events.append(("payment.succeeded", {**common, "amount": 1000}))
        events.append(("refund.succeeded", {**common, "refund_id": f"re_{n}_a", "amount": 400}))
        events.append(("refund.succeeded", {**common, "refund_id": f"re_{n}_b", "amount": 600}))
    rng.shuffle(events)
    sent = [await partner.send(kind, **data) for kind, data in events]
    statuses = await wait_settled(pool, sent)
    assert set(statuses.values()) == {"processed"}
    for n in range(10):
        row = await payment_row(pool, partner, f"pay_{n}")
        assert (row["status"], row["refunded_amount"]) == ("refunded", 1000)
    seqs = sorted((await seqs_by_event(pool, m)).values())
    assert seqs == list(range(1, 31))


async def test_events_of_one_payment_take_effect_in_arrival_order(
    partner: Partner, pool: asyncpg.Pool
) -> None:
    """failed-then-succeeded ends succeeded; succeeded-then-failed parks the late failure."""
    m = merchant()
    data: dict[str, Any] = {"merchant_id": m, "amount": 500, "currency": "USD"}
    retried = [
        await partner.send("payment.failed", payment_id="pay_r", failure_code="declined", **data),
        await partner.send("payment.succeeded", payment_id="pay_r", **data),
    ]
    late = [await partner.send("payment.succeeded", payment_id="pay_l", **data)]
    late.append(await partner.send("payment.failed", payment_id="pay_l", failure_code="x", **data))
    statuses = await wait_settled(pool, retried + late)
    assert (await payment_row(pool, partner, "pay_r"))["status"] == "succeeded"
    assert (await payment_row(pool, partner, "pay_l"))["status"] == "succeeded"
    assert statuses[late[1]] == "dead_lettered"
    audit = await pool.fetch(
        "SELECT from_state, to_state FROM audit_log WHERE entity_type = 'payment'"
        " AND entity_id = $1 ORDER BY id",
        f"{partner.id}:pay_r",
    )
    assert [(r["from_state"], r["to_state"]) for r in audit] == [
        (None, "failed"),
        ("failed", "succeeded"),
    ]


async def test_refunds_never_exceed_the_payment(partner: Partner, pool: asyncpg.Pool) -> None:
    """A refund larger than what is left is parked as a dead letter with an alert."""
    m = merchant()
    common: dict[str, Any] = {"payment_id": "pay_x", "merchant_id": m, "currency": "EUR"}
    sent = [
        await partner.send("payment.succeeded", amount=1000, **common),
        await partner.send("refund.succeeded", refund_id="re_a", amount=700, **common),
        await partner.send("refund.succeeded", refund_id="re_b", amount=400, **common),
    ]
    statuses = await wait_settled(pool, sent)
    assert [statuses[e] for e in sent] == ["processed", "processed", "dead_lettered"]
    assert (await payment_row(pool, partner, "pay_x"))["refunded_amount"] == 700
    reason = await pool.fetchval("SELECT reason FROM dead_letters WHERE event_id = $1", sent[2])
    assert reason == "refund of 400 exceeds the 300 left"
    alert = await pool.fetchval(
        "SELECT kind FROM alerts WHERE dedup_key = $1", f"dead_letter:{sent[2]}"
    )
    assert alert == "money_event_dead_lettered"


async def test_repeated_refund_id_takes_effect_once(partner: Partner, pool: asyncpg.Pool) -> None:
    """The same refund sent under two webhook ids refunds once."""
    m = merchant()
    common: dict[str, Any] = {"payment_id": "pay_d", "merchant_id": m, "currency": "EUR"}
    sent = [
        await partner.send("payment.succeeded", amount=1000, **common),
        await partner.send("refund.succeeded", refund_id="re_same", amount=100, **common),
        await partner.send("refund.succeeded", refund_id="re_same", amount=100, **common),
    ]
    await wait_settled(pool, sent)
    assert (await payment_row(pool, partner, "pay_d"))["refunded_amount"] == 100


async def test_balance_updates_are_last_writer_wins(partner: Partner, pool: asyncpg.Pool) -> None:
    """An older ``as_of`` arriving after a newer one neither overwrites it nor emits an event."""
    m = merchant()
    now = datetime.now(UTC)
    common: dict[str, Any] = {"merchant_id": m, "currency": "EUR", "pending": 0}
    newer = await partner.send("balance.updated", available=200, as_of=now.isoformat(), **common)
    await wait_settled(pool, [newer])
    older = await partner.send(
        "balance.updated", available=100, as_of=(now - timedelta(minutes=1)).isoformat(), **common
    )
    await wait_settled(pool, [older])
    balance = await pool.fetchval(
        "SELECT available FROM balances WHERE merchant_id = $1 AND currency = 'EUR'", m
    )
    assert balance == 200
    assert list(await seqs_by_event(pool, m)) == [newer]


async def test_concurrent_balance_updates_settle_on_the_newest(
    partner: Partner, pool: asyncpg.Pool
) -> None:
    """Balance updates are not ordered by arrival: whichever applies last, the newest wins."""
    m = merchant()
    now = datetime.now(UTC)
    common: dict[str, Any] = {"merchant_id": m, "currency": "EUR", "pending": 0}
    sent = [
        await partner.send(
            "balance.updated",
            available=minutes,
            as_of=(now + timedelta(minutes=minutes)).isoformat(),
            **common,
        )
        for minutes in (3, 1, 2)
    ]
    await wait_settled(pool, sent)
    balance = await pool.fetchval(
        "SELECT available FROM balances WHERE merchant_id = $1 AND currency = 'EUR'", m
    )
    assert balance == 3


async def test_unknown_event_types_are_stored_as_ignored(
    partner: Partner, pool: asyncpg.Pool
) -> None:
    """An event type Switchboard does not know is kept, marked ignored, and has no effect."""
    event = await partner.send("dispute.created", dispute_id="dp_1", merchant_id=merchant())
    assert await wait_settled(pool, [event]) == {event: "ignored"}
    payload = await pool.fetchval("SELECT payload FROM webhooks WHERE event_id = $1", event)
    assert payload == {
        "type": "dispute.created",
        "data": {"dispute_id": "dp_1", "merchant_id": payload["data"]["merchant_id"]},
    }


async def test_a_card_decline_pages_nobody(partner: Partner, pool: asyncpg.Pool) -> None:
    """A failed payment is a business event the partner reports, not an incident: it is
    applied and published like any other, and raises no alert (on-call hears about declines
    only when their rate jumps)."""
    event = await partner.send(
        "payment.failed",
        payment_id="pay_f",
        merchant_id=merchant(),
        amount=1,
        currency="EUR",
        failure_code="insufficient_funds",
    )
    assert (await wait_settled(pool, [event]))[event] == "processed"
    alerts = await pool.fetchval(
        "SELECT count(*) FROM alerts WHERE details->>'event_id' = $1 OR dedup_key LIKE $2",
        event,
        f"%{partner.id}%",
    )
    assert alerts == 0
