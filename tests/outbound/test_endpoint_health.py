"""Endpoint health: the circuit breaker opens, probes and closes; a long run of failures
disables the endpoint; both raise (and clear) their alerts. Each test runs its own api and
worker with tighter health settings on a database of its own."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
from temporalio.client import Client

from core.settings import Settings
from devstack.mailsink import CaughtMail, MailSink
from tests.outbound.stub import Answer, StubMerchant
from tests.outbound.support import wait_delivery_status
from tests.support import (
    Partner,
    add_partner,
    isolated_settings,
    running_api,
    running_worker,
    stores,
    wait_for,
)

ADMIN = {"authorization": "Bearer sb_dev_admin_key"}


@contextlib.asynccontextmanager
async def stack(
    settings: Settings, postgres_admin_url: str, client: Client, **overrides: Any
) -> AsyncIterator[tuple[asyncpg.Pool, httpx.AsyncClient, Partner, StubMerchant]]:
    isolated = await isolated_settings(
        settings,
        postgres_admin_url,
        delivery_task_queue=f"dq-{uuid.uuid4().hex[:8]}",
        **overrides,
    )
    async with (
        stores(isolated) as (pool, redis),
        running_api(isolated) as api_url,
        httpx.AsyncClient(base_url=api_url) as http,
        running_worker(isolated, client, pool, redis),
        StubMerchant().running() as stub,
    ):
        yield pool, http, await add_partner(pool, http), stub


async def register(http: httpx.AsyncClient, stub: StubMerchant, merchant: str, path: str) -> str:
    response = await http.post(
        "/v1/endpoints", json={"merchant_id": merchant, "url": f"{stub.url}{path}"}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    endpoint_id: str = response.json()["id"]
    return endpoint_id


async def test_circuit_opens_then_one_probe_closes_it(
    settings: Settings, postgres_admin_url: str, temporal_client: Client
) -> None:
    async with stack(
        settings,
        postgres_admin_url,
        temporal_client,
        circuit_failure_threshold=3,
        circuit_cooldown_seconds=1.5,
        endpoint_failing_alert_after=2,
        delivery_retry_schedule=[0, 0.1, 0.1, 0.1, 0.1, 0.1],
    ) as (pool, http, partner, stub):
        endpoint_id = await register(http, stub, "m-breaker", "/breaker")
        stub.script("/breaker", *[Answer(500)] * 3)
        event_id = await partner.send(
            "payment.succeeded",
            payment_id="pay_cb",
            merchant_id="m-breaker",
            amount=1,
            currency="EUR",
        )
        await wait_delivery_status(pool, event_id, "succeeded")
        received = stub.at("/breaker")
        assert len(received) == 4
        # The fourth request is the probe, sent once the circuit's open period ran out
        # (the lane jitters its wait by ±20 %); retries alone would have come after 0.1 s.
        assert received[3].at - received[2].at >= 1.5 * 0.8
        attempts = await pool.fetchval(
            "SELECT count(*) FROM delivery_attempts WHERE endpoint_id = $1", endpoint_id
        )
        assert attempts == 4, "waiting for the breaker is not an attempt"
        health = (await http.get(f"/v1/endpoints/{endpoint_id}", headers=ADMIN)).json()
        assert (health["consecutive_failures"], health["circuit_open_until"]) == (0, None)
        alert = await pool.fetchrow(
            "SELECT status, resolved_at FROM alerts WHERE dedup_key = $1",
            f"endpoint_failing:{endpoint_id}",
        )
        assert alert is not None and alert["status"] == "resolved"


async def test_an_endpoint_failing_for_too_long_is_disabled(
    settings: Settings, postgres_admin_url: str, temporal_client: Client, mail_sink: MailSink
) -> None:
    """Disabled with an alert, an audit entry and an email notice to the merchant; resuming and
    replaying then delivers what was dead-lettered."""
    async with stack(
        settings,
        postgres_admin_url,
        temporal_client,
        endpoint_disable_after_seconds=1.0,
        delivery_retry_schedule=[0, 1.5, 1.5, 1.5],
    ) as (pool, http, partner, stub):
        owner = f"owner-{uuid.uuid4().hex[:8]}@merchant.example"
        await http.post("/v1/merchants", json={"id": "m-dying", "email": owner}, headers=ADMIN)
        endpoint_id = await register(http, stub, "m-dying", "/dying")
        stub.script("/dying", *[Answer(503)] * 2)
        event_id = await partner.send(
            "payment.succeeded",
            payment_id="pay_dy",
            merchant_id="m-dying",
            amount=1,
            currency="EUR",
        )
        await wait_delivery_status(pool, event_id, "dead_lettered")
        health = (await http.get(f"/v1/endpoints/{endpoint_id}", headers=ADMIN)).json()
        assert health["status"] == "disabled"
        assert health["status_reason"].startswith("failing without a success since")
        assert len(stub.at("/dying")) == 2, "no attempt is sent once the endpoint is disabled"
        reason = await pool.fetchval(
            "SELECT last_error FROM deliveries WHERE event_id = $1 AND channel = 'webhook'",
            event_id,
        )
        assert reason == "endpoint disabled"
        kinds = await pool.fetch(
            "SELECT kind, status FROM alerts WHERE details->>'endpoint_id' = $1 ORDER BY id",
            endpoint_id,
        )
        assert {(row["kind"], row["status"]) for row in kinds} >= {("endpoint_disabled", "open")}
        audit = await pool.fetchval(
            "SELECT to_state FROM audit_log WHERE entity_type = 'endpoint' AND entity_id = $1"
            " ORDER BY id DESC LIMIT 1",
            endpoint_id,
        )
        assert audit == "disabled"
        notice = await wait_for(
            lambda: _mail_to(mail_sink, owner), what="the merchant's disabled-endpoint notice"
        )
        assert notice.subject == f"Webhook endpoint disabled: {stub.url}/dying"
        assert f"switchboard endpoints resume {endpoint_id}" in notice.text
        resumed = await http.post(f"/v1/endpoints/{endpoint_id}/resume", headers=ADMIN)
        assert resumed.json()["status"] == "active"
        replay = await http.post(
            "/v1/deliveries/replay",
            json={"endpoint_id": endpoint_id, "dry_run": False},
            headers=ADMIN,
        )
        assert replay.json()["replayed"] == 1
        await wait_delivery_status(pool, event_id, "succeeded")


async def _mail_to(sink: MailSink, recipient: str) -> CaughtMail | None:
    """The disabled-endpoint notice to ``recipient`` (the sale notice goes there too)."""
    return next(
        (
            mail
            for mail in sink.messages()
            if mail.to == recipient and mail.subject.startswith("Webhook endpoint disabled")
        ),
        None,
    )
