"""``switchboard demo`` lights up the merchant that ``switchboard dev`` points the dashboard at."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from cli.demo import DemoPlan, demo_merchants, run_demo
from cli.dev_state import DEMO_MERCHANT
from tests.support import add_partner

ADMIN = {"authorization": "Bearer sb_dev_admin_key"}


def test_the_demo_merchant_comes_first() -> None:
    """By default the traffic's first merchant is merchant_demo, then merchant_demo_1 …"""
    plan = DemoPlan("http://api", "demo", "whsec_x", rate=1, duration=1, merchants=3)
    assert demo_merchants(plan.first_merchant, plan.merchants) == [
        DEMO_MERCHANT,
        f"{DEMO_MERCHANT}_1",
        f"{DEMO_MERCHANT}_2",
    ]
    assert demo_merchants(DEMO_MERCHANT, 1) == [DEMO_MERCHANT]


async def test_demo_traffic_reaches_its_first_merchant(
    api_url: str, http: httpx.AsyncClient, pool: asyncpg.Pool, pipeline: None
) -> None:
    """Sent by an auto-onboarding partner (as dev's demo partner is), the demo's traffic is
    processed and the first merchant's events are there to show."""
    partner = await add_partner(pool, http, onboarding=False, auto_onboard_merchants=True)
    # A merchant of its own: the session database is shared, and merchant_demo may be another
    # partner's there (auto-onboarding never takes a merchant that another partner has).
    first = f"m_demo_{uuid.uuid4().hex[:8]}"
    plan = DemoPlan(api_url, partner.id, partner.secret, 20, 1, 3, first_merchant=first, seed=7)
    with httpx.Client(base_url=api_url, headers=ADMIN, timeout=30) as operator:
        report = await asyncio.to_thread(run_demo, plan, operator=operator, show_progress=False)
    assert report.failed == 0, report.summary()
    assert report.accepted == report.sent == 20
    assert set(report.accepted_by_merchant) == {first, f"{first}_1", f"{first}_2"}
    assert report.accepted_by_merchant[first] > 0
    events = (await http.get("/v1/events", params={"merchant_id": first}, headers=ADMIN)).json()
    assert 0 < len(events) <= report.accepted_by_merchant[first]
    assert f"{report.accepted_by_merchant[first]} for {first}" in report.summary()
