"""The health monitor: a real backlog (webhooks relayed while no webhook worker runs) raises
inbox, task-queue and no-poller alerts through its Temporal Schedule, and they resolve once a
worker drains it; partner-reported declines alert only when a merchant's rate jumps."""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
from temporalio.client import Client

from activities.monitor import HealthActivities
from core.alert_policy import load_policy
from core.settings import Settings
from relays.inbox import InboxRelay
from tests.support import (
    add_partner,
    isolated_settings,
    running_api,
    stores,
    wait_for,
)
from worker import (
    build_delivery_worker,
    build_oncall_worker,
    build_worker,
    ensure_monitor_schedule,
)


async def open_kinds(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch("SELECT DISTINCT kind FROM alerts WHERE status <> 'resolved'")
    return {row["kind"] for row in rows}


async def test_a_real_backlog_raises_alerts_that_resolve_when_it_drains(
    postgres_admin_url: str, settings: Settings, temporal_client: Client
) -> None:
    isolated = await isolated_settings(
        settings,
        postgres_admin_url,
        monitor_schedule=True,
        monitor_interval_seconds=1,
        inbox_age_alert_seconds=2,
        backlog_age_alert_seconds=2,
        relay_max_in_flight=4,
    )
    policy = load_policy(isolated.alerting_policy)
    async with (
        stores(isolated) as (pool, redis),
        running_api(isolated) as api_url,
        httpx.AsyncClient(base_url=api_url) as http,
        contextlib.AsyncExitStack() as stack,
    ):
        for worker in (
            build_oncall_worker(temporal_client, isolated, pool, policy, stack),
            build_delivery_worker(temporal_client, isolated, pool, stack),
        ):
            await stack.enter_async_context(worker)
        schedule_id = f"health-monitor:{isolated.oncall_task_queue}"
        await ensure_monitor_schedule(temporal_client, isolated)
        stack.push_async_callback(temporal_client.get_schedule_handle(schedule_id).delete)
        relay = asyncio.create_task(InboxRelay(pool, temporal_client, isolated).run())
        stack.callback(relay.cancel)
        partner = await add_partner(pool, http)
        sent = [
            await partner.send(
                "payment.succeeded",
                payment_id=f"pay_{n}",
                merchant_id="m-backlog",
                amount=100,
                currency="EUR",
            )
            for n in range(12)
        ]
        # Four workflows started with no webhook worker to run them, eight more in the inbox.
        expected = {"inbox_backlog", "task_queue_backlog", "no_pollers"}

        async def raised() -> bool:
            return expected <= await open_kinds(pool)

        await wait_for(raised, timeout=45, interval=0.5, what=f"{expected} to be raised")
        await stack.enter_async_context(build_worker(temporal_client, isolated, pool, redis, stack))

        async def drained() -> bool:
            done = await pool.fetchval(
                "SELECT count(*) FROM webhooks WHERE event_id = ANY($1) AND status = 'processed'",
                sent,
            )
            return done == len(sent) and not (expected & await open_kinds(pool))

        await wait_for(drained, timeout=60, interval=0.5, what="the backlog alerts to resolve")
        resolved_by = await pool.fetch(
            "SELECT DISTINCT resolved_by FROM alerts WHERE kind = ANY($1)", list(expected)
        )
        assert [row["resolved_by"] for row in resolved_by] == ["switchboard"]


async def test_declines_alert_only_when_a_merchants_rate_jumps(
    postgres_admin_url: str, settings: Settings, temporal_client: Client
) -> None:
    """A day of 1,000 payments with 200 declines spread over 20 merchants raises nothing; one
    merchant whose declines jump in the last five minutes raises one alert, which resolves once
    its rate is back to normal."""
    isolated = await isolated_settings(settings, postgres_admin_url)
    rng = random.Random(7)
    now = datetime.now(UTC)
    async with stores(isolated) as (pool, _):
        await pool.execute("INSERT INTO partners (id, name) VALUES ('psp', 'psp')")
        rows = []
        for n in range(1000):
            minutes_ago = rng.uniform(0, 24 * 60)
            rows.append(
                (
                    f"pay_{n}",
                    f"m_{n % 20}",
                    "failed" if n % 5 == 0 else "succeeded",
                    now - timedelta(minutes=minutes_ago),
                )
            )
        # The spike: 30 of 36 payments of one merchant fail within the window.
        rows += [
            (f"spike_{n}", "m_3", "failed" if n < 30 else "succeeded", now - timedelta(seconds=n))
            for n in range(36)
        ]
        await pool.executemany(
            "INSERT INTO payments (partner_id, payment_id, merchant_id, amount, currency, status,"
            " created_at) VALUES ('psp', $1, $2, 100, 'EUR', $3, $4)",
            rows,
        )
        monitor = HealthActivities(pool, temporal_client, isolated)
        report = await monitor.check()
        declines = [key for key in report.open_alerts if key.startswith("payment_decline_rate")]
        assert declines == ["payment_decline_rate:psp:m_3"]
        summary = await pool.fetchval(
            "SELECT summary FROM alerts WHERE dedup_key = $1", declines[0]
        )
        assert "30 of" in summary and "m_3" in summary
        # Back to normal: the spike ages out of the window.
        await pool.execute(
            "UPDATE payments SET created_at = created_at - interval '1 hour'"
            " WHERE payment_id LIKE 'spike_%'"
        )
        report = await monitor.check()
        assert not [key for key in report.open_alerts if key.startswith("payment_decline")]
        status = await pool.fetchval("SELECT status FROM alerts WHERE dedup_key = $1", declines[0])
        assert status == "resolved"
