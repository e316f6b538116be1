"""Poison messages: what no retry can cure is parked where it happens, and whatever keeps
retrying never starves healthy traffic of the relay's budget.

The failures are real Postgres errors, raised by triggers installed in the test's own database
(every error class is provoked for real in ``tests/core/test_db_errors.py``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime

import asyncpg
import httpx
from temporalio.client import Client

from core.settings import Settings
from tests.support import (
    add_partner,
    isolated_settings,
    running_api,
    running_worker,
    stores,
    wait_for,
    wait_for_status,
    wait_settled,
)

# Payments of merchants named ``<sqlstate>-…`` fail in the ledger with that SQLSTATE.
FAILING_PAYMENTS = """
CREATE FUNCTION fail_on_purpose() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.merchant_id ~ '^[0-9A-Z]{5}-' THEN
        RAISE EXCEPTION 'provoked failure for %', NEW.merchant_id
            USING ERRCODE = split_part(NEW.merchant_id, '-', 1);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_on_purpose BEFORE INSERT ON payments
    FOR EACH ROW EXECUTE FUNCTION fail_on_purpose();
"""


async def test_permanent_errors_are_dead_lettered_where_they_happen(
    postgres_admin_url: str, settings: Settings, temporal_client: Client
) -> None:
    """A payment failing with a data or integrity error is parked at once with the reason and an
    alert, while one failing with a serialization error keeps retrying until it passes."""
    isolated = await isolated_settings(settings, postgres_admin_url)
    async with (
        stores(isolated) as (pool, redis),
        running_api(isolated) as api_url,
        httpx.AsyncClient(base_url=api_url) as http,
    ):
        await pool.execute(FAILING_PAYMENTS)
        partner = await add_partner(pool, http)

        async def pay(merchant: str) -> str:
            return await partner.send(
                "payment.succeeded",
                payment_id=f"pay_{uuid.uuid4().hex[:8]}",
                merchant_id=merchant,
                amount=100,
                currency="EUR",
            )

        permanent = {code: await pay(f"{code}-m") for code in ("22008", "22003", "23514")}
        transient = await pay("40001-m")
        async with running_worker(isolated, temporal_client, pool, redis):
            statuses = await wait_settled(pool, list(permanent.values()), timeout=30)
            assert set(statuses.values()) == {"dead_lettered"}
            for code, event_id in permanent.items():
                reason = await pool.fetchval(
                    "SELECT reason FROM dead_letters WHERE event_id = $1", event_id
                )
                assert f"({code})" in reason and "provoked failure" in reason
                assert await pool.fetchval(
                    "SELECT count(*) FROM alerts WHERE dedup_key = $1", f"dead_letter:{event_id}"
                )
            # Still retrying (its workflow started, nothing parked): then the cause goes away (a
            # fix deployed) and it takes effect.
            await wait_for_status(pool, transient, "started")
            assert not await pool.fetchval(
                "SELECT count(*) FROM dead_letters WHERE event_id = $1", transient
            )
            await pool.execute("DROP TRIGGER fail_on_purpose ON payments")
            assert (await wait_settled(pool, [transient], timeout=30))[transient] == "processed"


async def test_a_poison_row_from_an_older_version_is_parked_not_retried(
    postgres_admin_url: str, settings: Settings, temporal_client: Client
) -> None:
    """The issue's reproduction, as rows an older ingress accepted: balance updates whose
    ``as_of`` Postgres cannot store. They are dead-lettered; the payments behind them apply."""
    isolated = await isolated_settings(settings, postgres_admin_url, relay_max_in_flight=20)
    async with stores(isolated) as (pool, redis):
        await pool.execute(
            "INSERT INTO partners (id, name, auto_onboard_merchants) VALUES ('old', 'old', true)"
        )
        poison = [
            await _record(
                pool,
                f"evt_poison_{n}",
                "balance.updated",
                f"balance:m_{n}:EUR",
                {
                    "merchant_id": f"m_{n}",
                    "available": 1,
                    "pending": 0,
                    "currency": "EUR",
                    "as_of": "0001-01-01T00:00:00+14:00",
                },
            )
            for n in range(20)
        ]
        payments = [
            await _record(
                pool,
                f"evt_pay_{n}",
                "payment.succeeded",
                f"payment:pay_{n}",
                {
                    "merchant_id": "m_0",
                    "payment_id": f"pay_{n}",
                    "amount": 5,
                    "currency": "EUR",
                },
            )
            for n in range(10)
        ]
        async with running_worker(isolated, temporal_client, pool, redis):
            statuses = await wait_settled(pool, poison + payments, timeout=60)
        assert {statuses[e] for e in poison} == {"dead_lettered"}
        assert {statuses[e] for e in payments} == {"processed"}
        reason = await pool.fetchval(
            "SELECT reason FROM dead_letters WHERE event_id = $1", poison[0]
        )
        assert "as_of" in reason


async def test_stuck_traffic_from_one_partner_leaves_room_for_the_others(
    postgres_admin_url: str, settings: Settings, temporal_client: Client
) -> None:
    """400 webhooks from one partner that keep failing transiently hold no more than that
    partner's share of a 20-slot budget: 100 valid ones from another partner, sent after them,
    are all published within seconds, and none of the stuck ones is lost."""
    isolated = await isolated_settings(settings, postgres_admin_url, relay_max_in_flight=20)
    async with (
        stores(isolated) as (pool, redis),
        running_api(isolated) as api_url,
        httpx.AsyncClient(base_url=api_url, timeout=30) as http,
    ):
        await pool.execute(FAILING_PAYMENTS)
        stuck_partner = await add_partner(pool, http)
        healthy_partner = await add_partner(pool, http)
        async with running_worker(isolated, temporal_client, pool, redis):
            stuck = [
                await stuck_partner.send(
                    "payment.succeeded",
                    payment_id=f"pay_{n}",
                    merchant_id="40001-stuck",
                    amount=1,
                    currency="EUR",
                )
                for n in range(400)
            ]
            healthy = [
                await healthy_partner.send(
                    "payment.succeeded",
                    payment_id=f"pay_{n}",
                    merchant_id=f"m-{n % 10}",
                    amount=1,
                    currency="EUR",
                )
                for n in range(100)
            ]

            async def all_published() -> bool:
                published = await pool.fetchval(
                    "SELECT count(*) FROM webhooks WHERE event_id = ANY($1::text[])"
                    " AND published_at IS NOT NULL",
                    healthy,
                )
                return bool(published == len(healthy))

            await wait_for(all_published, timeout=20, what="the healthy partner's webhooks")
            in_flight = await pool.fetchval(
                "SELECT count(*) FROM webhooks WHERE event_id = ANY($1::text[])"
                " AND status = 'started'",
                stuck,
            )
        assert 1 <= in_flight <= 20
        # Nothing acknowledged is lost: every stuck webhook is still in the inbox, unapplied.
        assert await pool.fetchval(
            "SELECT count(*) FROM webhooks WHERE event_id = ANY($1::text[])"
            " AND status IN ('received', 'started')",
            stuck,
        ) == len(stuck)


async def _record(
    pool: asyncpg.Pool, event_id: str, event_type: str, entity_key: str, data: dict[str, object]
) -> str:
    envelope = {"type": event_type, "data": data}
    await pool.execute(
        "INSERT INTO webhooks (event_id, partner_id, webhook_id, body_sha256, event_type,"
        " entity_key, merchant_id, priority, payload, received_at)"
        " VALUES ($1, 'old', $1, $2, $3, $4, $5, $6, $7, $8)",
        event_id,
        hashlib.sha256(json.dumps(envelope).encode()).digest(),
        event_type,
        entity_key,
        data["merchant_id"],
        4 if event_type == "balance.updated" else 1,
        envelope,
        datetime.now(UTC),
    )
    return event_id
