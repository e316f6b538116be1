"""Tenant boundaries through the whole pipeline: no partner writes another's merchant.

Canaries go in through the real ingress and are checked where they would do harm: the ledger
(payments, balances, the merchant's events), outbound deliveries and emails (planned in the same
transaction), the dashboard's sync endpoint, and the operator's view (dead letters, alerts).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from tests.support import Partner, add_partner, wait_for, wait_settled

pytestmark = pytest.mark.usefixtures("pipeline")

ADMIN = {"authorization": "Bearer sb_dev_admin_key"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def onboard(http: httpx.AsyncClient, merchant: str, *partners: Partner) -> None:
    """Create the merchant through the operator API, linked to ``partners``."""
    response = await http.post(
        "/v1/merchants",
        json={
            "id": merchant,
            "name": "Canary shop",
            "email": "owner@canary.example",
            "partners": [p.id for p in partners],
        },
        headers=ADMIN,
    )
    assert response.status_code == 201, response.text


async def payment(partner: Partner, merchant: str, payment_id: str, amount: int = 500) -> str:
    return await partner.send(
        "payment.succeeded",
        payment_id=payment_id,
        merchant_id=merchant,
        amount=amount,
        currency="EUR",
        customer_email="buyer@canary.example",
    )


async def test_a_partner_cannot_write_a_merchant_it_is_not_linked_to(
    pool: asyncpg.Pool, http: httpx.AsyncClient
) -> None:
    """B's payment for A's merchant is recorded (202) but parked: no payment, no merchant event,
    no delivery or email, nothing on the dashboard; one alert names the pair. Linking B replays
    it, and it then takes effect once; the link resolves the alert."""
    owner = await add_partner(pool, http, onboarding=False)
    intruder = await add_partner(pool, http, onboarding=False)
    merchant = unique("m-canary")
    await onboard(http, merchant, owner)
    endpoint = await http.post(
        "/v1/endpoints",
        json={"merchant_id": merchant, "url": "http://127.0.0.1:9/hooks"},
        headers=ADMIN,
    )
    assert endpoint.status_code == 201, endpoint.text
    genuine = await payment(owner, merchant, "pay_genuine", 700)
    forged = await payment(intruder, merchant, "pay_forged", 99_999)
    statuses = await wait_settled(pool, [genuine, forged])
    assert statuses == {genuine: "processed", forged: "dead_lettered"}

    parked = await pool.fetchrow(
        "SELECT reason, cause FROM dead_letters WHERE event_id = $1", forged
    )
    assert parked is not None
    assert parked["cause"] == "unlinked_merchant"
    assert intruder.id in parked["reason"] and merchant in parked["reason"]
    assert not await pool.fetchval(
        "SELECT count(*) FROM payments WHERE merchant_id = $1 AND partner_id = $2",
        merchant,
        intruder.id,
    )
    assert not await pool.fetchval("SELECT count(*) FROM events WHERE event_id = $1", forged)
    assert not await pool.fetchval("SELECT count(*) FROM deliveries WHERE event_id = $1", forged)
    planned = await pool.fetchval("SELECT count(*) FROM deliveries WHERE event_id = $1", genuine)
    assert planned == 3  # the endpoint, the customer's receipt, the merchant's sale notice
    sync = (await http.get(f"/v1/merchants/{merchant}/sync", headers=ADMIN)).json()
    assert [e["event_id"] for e in sync["events"]] == [genuine]
    assert [(t["currency"], t["volume"]) for t in sync["totals"]] == [("EUR", 700)]
    alerts = (await http.get("/v1/alerts", headers=ADMIN)).json()
    unlinked = [
        a for a in alerts if a["dedup_key"] == f"unlinked_merchant:{intruder.id}:{merchant}"
    ]
    assert len(unlinked) == 1
    assert unlinked[0]["status"] == "open"

    linked = await http.put(f"/v1/merchants/{merchant}/partners/{intruder.id}", headers=ADMIN)
    assert linked.status_code == 200, linked.text
    assert linked.json() == {
        "merchant_id": merchant,
        "partner_id": intruder.id,
        "created": True,
        "replayed": [forged],
    }

    async def applied() -> bool:
        return bool(await pool.fetchval("SELECT 1 FROM events WHERE event_id = $1", forged))

    await wait_for(applied, what="the replayed webhook to take effect")
    resolved = await pool.fetchrow(
        "SELECT status, resolved_by FROM alerts WHERE id = $1", unlinked[0]["id"]
    )
    assert resolved is not None
    assert dict(resolved) == {"status": "resolved", "resolved_by": "api-key:bootstrap"}
    still_open = await http.get("/v1/alerts", params={"kind": "unlinked_merchant"}, headers=ADMIN)
    assert unlinked[0]["id"] not in {a["id"] for a in still_open.json()}
    again = await http.put(f"/v1/merchants/{merchant}/partners/{intruder.id}", headers=ADMIN)
    assert again.json()["created"] is False and again.json()["replayed"] == []
    trail = await pool.fetch(
        "SELECT to_state, actor FROM audit_log WHERE entity_type = 'merchant_partner'"
        " AND entity_id = $1 ORDER BY id",
        f"{merchant}|{intruder.id}",
    )
    assert [(r["to_state"], r["actor"]) for r in trail] == [("linked", "api-key:bootstrap")]


async def test_auto_onboarding_creates_new_merchants_but_never_takes_one_over(
    pool: asyncpg.Pool, http: httpx.AsyncClient
) -> None:
    """A partner that onboards on first sight gets new merchants linked to it, but its webhook
    for a merchant another partner is linked to is parked; off by default."""
    owner = await add_partner(pool, http, onboarding=False)
    eager = await add_partner(pool, http, onboarding=False, auto_onboard_merchants=True)
    plain = await add_partner(pool, http, onboarding=False)
    taken, fresh, unknown = unique("m-taken"), unique("m-fresh"), unique("m-unknown")
    await onboard(http, taken, owner)
    events = [
        await payment(eager, fresh, "pay_1"),
        await payment(eager, taken, "pay_2"),
        await payment(plain, unknown, "pay_3"),
    ]
    statuses = await wait_settled(pool, events)
    assert [statuses[e] for e in events] == ["processed", "dead_lettered", "dead_lettered"]
    merchant = (await http.get(f"/v1/merchants/{fresh}", headers=ADMIN)).json()
    assert merchant["partners"] == [eager.id]
    assert (await http.get(f"/v1/merchants/{unknown}", headers=ADMIN)).status_code == 404
    partners = {p["id"]: p for p in (await http.get("/v1/partners", headers=ADMIN)).json()}
    assert partners[eager.id]["auto_onboard_merchants"] is True
    assert partners[plain.id]["auto_onboard_merchants"] is False


async def test_balances_belong_to_the_partner_that_reports_them(
    pool: asyncpg.Pool, http: httpx.AsyncClient
) -> None:
    """Two partners of one merchant each keep their own balance; neither overwrites the other's,
    however new its ``as_of``."""
    first = await add_partner(pool, http, onboarding=False)
    second = await add_partner(pool, http, onboarding=False)
    merchant = unique("m-two")
    await onboard(http, merchant, first, second)
    now = datetime.now(UTC)
    sent = [
        await first.send(
            "balance.updated",
            merchant_id=merchant,
            available=1000,
            pending=10,
            currency="EUR",
            as_of=(now - timedelta(minutes=1)).isoformat(),
        ),
        await second.send(
            "balance.updated",
            merchant_id=merchant,
            available=5,
            pending=0,
            currency="EUR",
            as_of=now.isoformat(),
        ),
    ]
    await wait_settled(pool, sent)
    balances = (await http.get(f"/v1/merchants/{merchant}", headers=ADMIN)).json()["balances"]
    assert sorted((b["partner_id"], b["available"]) for b in balances) == sorted(
        [(first.id, 1000), (second.id, 5)]
    )
    sync = (await http.get(f"/v1/merchants/{merchant}/sync", headers=ADMIN)).json()
    assert sorted(b["available"] for b in sync["balances"]) == [5, 1000]
