"""Exchange request workflows through the real api, worker and relays: on virtual time, the
pending-SLA alert (raised, then resolved by the claim), the idle assignment going back to the
queue (audited as system:sla, naming the assignee) and the customer's emails; in real time with
a short timeout, timers racing operators' transitions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import timedelta

import asyncpg
import httpx
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.exchange import SLA_ACTOR, pending_sla_dedup_key
from core.contracts import ExchangeStatus, exchange_workflow_id
from core.settings import Settings
from tests.exchange.support import act, assert_valid_path, create_request, operators
from tests.money_support import new_merchant
from tests.support import (
    isolated_settings,
    running_api,
    running_worker,
    stores,
    time_skipping_stack,
    wait_for,
)

PENDING_SLA = timedelta(minutes=15)
ASSIGNED_TIMEOUT = timedelta(minutes=30)
SLA = {
    "exchange_pending_sla_seconds": PENDING_SLA.total_seconds(),
    "exchange_assigned_timeout_seconds": ASSIGNED_TIMEOUT.total_seconds(),
}


async def started(pool: asyncpg.Pool, request_id: str) -> None:
    async def probe() -> bool:
        return bool(
            await pool.fetchval(
                "SELECT workflow_started_at IS NOT NULL FROM exchange_requests WHERE id = $1",
                request_id,
            )
        )

    await wait_for(probe, what=f"the workflow of {request_id} to start")


async def alert_status(pool: asyncpg.Pool, request_id: str) -> str | None:
    status: str | None = await pool.fetchval(
        "SELECT status FROM alerts WHERE dedup_key = $1", pending_sla_dedup_key(request_id)
    )
    return status


async def test_an_unclaimed_request_raises_the_sla_alert_and_the_claim_resolves_it(
    time_skipping: WorkflowEnvironment, postgres_admin_url: str, settings: Settings
) -> None:
    """Pending past its SLA: one alert, routed to the desk; the claim resolves it; the customer
    got a 'received' email."""
    async with time_skipping_stack(time_skipping, postgres_admin_url, settings, **SLA) as (
        pool,
        http,
        _,
    ):
        merchant = await new_merchant(pool)
        [(alice, alice_key)] = await operators(pool, 1)
        request = await create_request(http, merchant, customer_email="ann@example.com")
        await started(pool, request["id"])
        await time_skipping.sleep(PENDING_SLA - timedelta(minutes=1))
        assert await alert_status(pool, request["id"]) is None
        await time_skipping.sleep(timedelta(minutes=2))
        await wait_for(lambda: _is(alert_status(pool, request["id"]), "open"), what="the SLA alert")
        route = await pool.fetchval(
            "SELECT g.route FROM alerts a JOIN alert_groups g ON g.id = a.group_id"
            " WHERE a.dedup_key = $1",
            pending_sla_dedup_key(request["id"]),
        )
        claimed = await act(http, request["id"], "claim", alice_key)
        assert claimed.status_code == 200, claimed.text
        await wait_for(
            lambda: _is(alert_status(pool, request["id"]), "resolved"),
            what="the claim to resolve the alert",
        )
        mail = await pool.fetch(
            "SELECT recipient, notice->>'milestone' AS milestone FROM deliveries"
            " WHERE template = 'exchange_request' ORDER BY created_at"
        )
        resolved_by = await _alert_audit(pool, request["id"])
    assert route in (None, "exchange_desk")
    assert [(m["recipient"], m["milestone"]) for m in mail] == [("ann@example.com", "received")]
    assert resolved_by == [("open", "resolved", f"assigned by {alice}")]


async def test_an_idle_assignment_goes_back_to_the_queue_and_an_active_one_stays(
    time_skipping: WorkflowEnvironment, postgres_admin_url: str, settings: Settings
) -> None:
    """Assigned past the timeout without progress: back to pending, audited as system:sla with
    the assignee named; claimed again and advanced, it is never released; it completes and the
    workflow ends with it."""
    async with time_skipping_stack(time_skipping, postgres_admin_url, settings, **SLA) as (
        pool,
        http,
        _,
    ):
        merchant = await new_merchant(pool)
        (alice, alice_key), (_, bob_key) = await operators(pool, 2)
        request = await create_request(http, merchant, customer_email="ann@example.com")
        request_id = request["id"]
        await started(pool, request_id)
        assert (await act(http, request_id, "claim", alice_key)).status_code == 200
        await time_skipping.sleep(ASSIGNED_TIMEOUT + timedelta(minutes=1))

        async def released() -> bool:
            return await _status(pool, request_id) == ExchangeStatus.PENDING

        await wait_for(released, what="the idle assignment to be released")
        path = await assert_valid_path(pool, request_id)
        assert (path[-1]["from_state"], path[-1]["actor"]) == ("assigned", SLA_ACTOR)
        assert alice in path[-1]["reason"] and "30m" in path[-1]["reason"]
        late = await act(http, request_id, "advance", alice_key, to="processing")
        assert late.status_code == 409 and late.json()["assignee"] is None

        assert (await act(http, request_id, "claim", bob_key)).status_code == 200
        advanced = await act(http, request_id, "advance", bob_key, to="processing")
        assert advanced.status_code == 200, advanced.text
        await time_skipping.sleep(ASSIGNED_TIMEOUT * 3)
        assert await _status(pool, request_id) == ExchangeStatus.PROCESSING
        done = await act(http, request_id, "advance", bob_key, to="completed")
        assert done.status_code == 200
        handle = time_skipping.client.get_workflow_handle(exchange_workflow_id(request_id))
        result = await asyncio.wait_for(handle.result(), 30)
        path = await assert_valid_path(pool, request_id)
        milestones = await pool.fetch(
            "SELECT notice->>'milestone' AS m FROM deliveries WHERE template = 'exchange_request'"
        )
        never_alerted = await alert_status(pool, request_id) is None
    assert never_alerted
    assert result.startswith("completed")
    assert [step["actor"] for step in path].count(SLA_ACTOR) == 1
    assert sorted(m["m"] for m in milestones) == ["completed", "processing", "received"]


RACE_TIMEOUT_SECONDS = 3.0
"""The assignment timeout of the race below, in real time."""


async def test_timers_racing_operators_never_double_or_break_a_transition(
    settings: Settings, postgres_admin_url: str, temporal_client: Client
) -> None:
    """Twenty assignments time out while their assignees advance them at that moment: each
    request moves exactly once, by the timer or by its assignee (the loser gets a 409), and
    its audit log is a valid path.

    On the real dev server with a short timeout, not on virtual time: twenty signals racing
    the time-skipping test server's timers sometimes break that server ("invalid history
    builder state for action"), which says nothing about the workflow."""
    racing = await isolated_settings(
        settings,
        postgres_admin_url,
        exchange_assigned_timeout_seconds=RACE_TIMEOUT_SECONDS,
        exchange_pending_sla_seconds=PENDING_SLA.total_seconds(),
    )
    async with (
        stores(racing) as (pool, redis),
        running_api(racing) as api_url,
        httpx.AsyncClient(base_url=api_url, timeout=30) as http,
        running_worker(racing, temporal_client, pool, redis),
    ):
        merchant = await new_merchant(pool)
        desk = await operators(pool, 20)
        requests = [(await create_request(http, merchant))["id"] for _ in desk]
        for request_id in requests:
            await started(pool, request_id)
        for request_id, (_, key) in zip(requests, desk, strict=True):
            assert (await act(http, request_id, "claim", key)).status_code == 200

        async def released() -> list[str]:
            statuses = [await _status(pool, r) for r in requests]
            return [r for r, s in zip(requests, statuses, strict=True) if s == "pending"]

        async def a_timer_fired() -> bool:
            return bool(await released())

        # The claims went in one by one, so their timers fire one by one: every assignee
        # advances the moment the first has fired, racing the timers still to come.
        await wait_for(a_timer_fired, timeout=RACE_TIMEOUT_SECONDS * 10, what="the first timer")
        answers = await asyncio.gather(
            *(
                act(http, request_id, "advance", key, to="processing")
                for request_id, (_, key) in zip(requests, desk, strict=True)
            )
        )

        async def settled() -> bool:
            won = [a for a in answers if a.status_code == 200]
            return len(await released()) + len(won) == len(requests)

        await wait_for(settled, what="every timer to have acted or stood down")
        logging.getLogger(__name__).info(
            "race: %d advanced by their assignee, %d released by their timer",
            sum(a.status_code == 200 for a in answers),
            len(await released()),
        )
        for request_id, answer in zip(requests, answers, strict=True):
            path = await assert_valid_path(pool, request_id)
            by_timer = [step for step in path if step["actor"] == SLA_ACTOR]
            if answer.status_code == 200:
                assert by_timer == [] and path[-1]["to_state"] == "processing"
            else:
                assert answer.status_code == 409, answer.text
                assert len(by_timer) == 1 and path[-1]["to_state"] == "pending"


async def _is(value: Awaitable[str | None], expected: str) -> bool:
    return await value == expected


async def _status(pool: asyncpg.Pool, request_id: str) -> str | None:
    status: str | None = await pool.fetchval(
        "SELECT status FROM exchange_requests WHERE id = $1", request_id
    )
    return status


async def _alert_audit(pool: asyncpg.Pool, request_id: str) -> list[tuple[str, str, str]]:
    rows = await pool.fetch(
        "SELECT l.from_state, l.to_state, l.reason FROM audit_log l JOIN alerts a"
        " ON l.entity_type = 'alert' AND l.entity_id = a.id::text WHERE a.dedup_key = $1"
        " AND l.from_state IS NOT NULL ORDER BY l.id",
        pending_sla_dedup_key(request_id),
    )
    return [(r["from_state"], r["to_state"], r["reason"]) for r in rows]
