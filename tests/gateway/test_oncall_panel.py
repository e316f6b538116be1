"""The dashboard's On-call panel in headless Chromium, against a real stack: the api, a worker
running escalations on the Temporal dev server, the gateway, and the Slack and PagerDuty sink.
Acknowledge, resolve and silence from the page reach the escalation workflow and Slack."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from playwright.async_api import Page, Route, expect
from temporalio.client import Client
from temporalio.service import RPCError

from core.alerting import AlertKind
from core.audit import raise_alert
from core.contracts import escalation_workflow_id
from core.settings import Settings
from devstack.oncall_sink import OncallSink
from tests.gateway.support import add_merchant, pages_with_worker, signed_in_page
from tests.oncall.support import TEST_CRITICAL, TEST_ERROR
from tests.support import wait_for

ACTOR = "api-key:bootstrap"  # the bootstrap admin key the page signs in with
UI_TIMEOUT = 20_000  # ms: the panel polls every 5 s, and escalations notify within a second


async def _raise(pool: asyncpg.Pool, kind: AlertKind, key: str, **details: Any) -> int:
    async with pool.acquire() as conn, conn.transaction():
        await raise_alert(
            conn,
            kind,
            dedup_key=f"{kind.name}:{key}",
            summary=f"{kind.name} {key} is failing",
            details=details,
        )
    alert_id: int = await pool.fetchval(
        "SELECT id FROM alerts WHERE dedup_key = $1", f"{kind.name}:{key}"
    )
    return alert_id


async def _group_of(pool: asyncpg.Pool, alert_id: int) -> str:
    async def routed() -> str | None:
        group: str | None = await pool.fetchval(
            "SELECT group_id FROM alerts WHERE id = $1", alert_id
        )
        return group

    return await wait_for(routed, what=f"alert {alert_id} to be routed")


async def _end_open_escalations(client: Client, pool: asyncpg.Pool) -> None:
    """Escalations never end by themselves: terminate what the test left open."""
    for row in await pool.fetch(
        "SELECT workflow_id FROM alert_groups WHERE workflow_id IS NOT NULL"
        " AND status <> 'resolved'"
    ):
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(row["workflow_id"]).terminate()


async def _updates(client: Client, group_id: str) -> list[str]:
    """The names of the updates the group's escalation workflow accepted, from its history."""
    handle = client.get_workflow_handle(escalation_workflow_id(group_id))
    return [
        event.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
        async for event in handle.fetch_history_events()
        if event.HasField("workflow_execution_update_accepted_event_attributes")
    ]


def _slack_updates(sink: OncallSink, ts: str) -> list[str]:
    """What ``chat.update`` calls the sink accepted for the message ``ts`` said."""
    return [
        json.dumps(call["body"])
        for call in sink.calls("slack")
        if call["method"] == "chat.update" and call["status"] == 200 and call["body"]["ts"] == ts
    ]


async def _stale_alerts(route: Route) -> None:
    """The page cannot re-read alerts (so it still shows what it last saw); actions go through."""
    if route.request.method == "GET":
        await route.abort()
    else:
        await route.continue_()


async def test_the_oncall_panel_acknowledges_resolves_and_silences_from_the_page(
    settings: Settings,
    postgres_admin_url: str,
    temporal_client: Client,
    oncall_sink: OncallSink,
    chromium: str,
) -> None:
    """In headless Chromium: a raised alert's group appears with its timeline; Acknowledge from
    the page reaches the escalation workflow and updates the Slack message; a page that missed
    someone else's acknowledgement shows the 409's detail; Resolve ends the escalation; a
    silence made from the group's form is listed and can be expired."""
    async with contextlib.AsyncExitStack() as exits:
        stack, pool, servers = await pages_with_worker(
            exits, settings, postgres_admin_url, temporal_client
        )
        api_url, http = servers.api_url, servers.http
        exits.push_async_callback(_end_open_escalations, temporal_client, pool)
        merchant = await add_merchant(pool)

        event_id = f"evt_{uuid.uuid4().hex[:12]}"
        critical = await _raise(pool, TEST_CRITICAL, "db-primary", event_id=event_id)
        error = await _raise(pool, TEST_ERROR, "partner-api", partner_id="p_panel")
        page, errors = await signed_in_page(exits, chromium, api_url, stack, merchant)
        await page.click(".tab[data-view=operator]")

        # The critical group: raised, notified on Slack at once (group_wait 0), with its links.
        group = await _group_of(pool, critical)
        card = page.locator(f"[data-group={group}]")
        await expect(card.locator("li[data-action=notified][data-channel=slack]")).to_be_visible(
            timeout=UI_TIMEOUT
        )
        await expect(card.locator("li[data-action=opened]")).to_contain_text("raised")
        await expect(card.locator("[data-role=state]")).to_have_text("open · not acknowledged")
        await expect(card.locator(f"tr[data-alert='{critical}'] button")).to_have_text("trace")
        shown = (await http.get(f"/v1/alerts/{critical}")).json()
        await expect(card.get_by_role("link", name="escalation in Temporal ↗")).to_have_attribute(
            "href", shown["workflow_url"]
        )

        # Acknowledge from the page: the workflow takes the update, the API and Slack say so.
        await card.locator("button[data-action=acknowledge]").click()
        await expect(card.locator("[data-role=state]")).to_have_text(
            f"acknowledged by {ACTOR}", timeout=UI_TIMEOUT
        )
        assert await _updates(temporal_client, group) == ["acknowledge"]
        acknowledged = (await http.get(f"/v1/alerts/{critical}")).json()
        assert (acknowledged["status"], acknowledged["acknowledged_by"]) == ("acknowledged", ACTOR)
        slack_ts = await pool.fetchval("SELECT slack_ts FROM alert_groups WHERE id = $1", group)

        async def slack_told() -> bool:
            updates = _slack_updates(oncall_sink, slack_ts)
            return any(f"Acknowledged by {ACTOR}" in update for update in updates)

        await wait_for(slack_told, what="Slack's chat.update saying who acknowledged")
        await expect(
            card.locator("li[data-action=acknowledged][data-channel=slack]")
        ).to_be_visible(timeout=UI_TIMEOUT)
        await expect(card.locator("button[data-action=acknowledge]")).to_be_disabled()

        # A page that has not seen someone else's acknowledgement: the 409 says who, no crash.
        error_group = await _group_of(pool, error)
        other = page.locator(f"[data-group={error_group}]")
        await expect(other.locator("[data-role=state]")).to_have_text(
            "open · not acknowledged", timeout=UI_TIMEOUT
        )
        await page.route("**/v1/alerts**", _stale_alerts)
        assert (await http.post(f"/v1/alerts/{error}/acknowledge")).status_code == 200
        await other.locator("button[data-action=acknowledge]").click()
        await expect(other.locator(".notice")).to_have_text(f"already acknowledged by {ACTOR}")
        await page.unroute("**/v1/alerts**", _stale_alerts)
        await expect(other.locator("[data-role=state]")).to_have_text(
            f"acknowledged by {ACTOR}", timeout=UI_TIMEOUT
        )

        # Resolve from the page: the escalation posts the resolution and ends.
        await card.locator("button[data-action=resolve]").click()
        await expect(card.locator("[data-role=state]")).to_have_text(
            f"resolved by {ACTOR}", timeout=UI_TIMEOUT
        )
        handle = temporal_client.get_workflow_handle(escalation_workflow_id(group))
        assert await handle.result() == f"resolved by {ACTOR} after 1 step(s), 0 page(s)"
        assert (await http.get(f"/v1/alerts/{critical}")).json()["status"] == "resolved"
        await expect(card.locator("li[data-action=resolved][data-channel=slack]")).to_be_visible(
            timeout=UI_TIMEOUT
        )

        # Silence the group's kind from its form, see it listed, then expire it.
        await card.locator("button[data-action=silence]").click()
        await expect(page.locator("#silence-matchers")).to_have_value("kind=test_critical")
        await page.select_option("#silence-duration", "14400")
        await page.fill("#silence-comment", "failover drill tonight")
        await page.click("#silence-form button[type=submit]")
        row = page.locator("#silences tr", has_text="failover drill tonight")
        await expect(row).to_contain_text("kind=test_critical", timeout=UI_TIMEOUT)
        await expect(row).to_contain_text(ACTOR)
        [silence] = (await http.get("/v1/silences")).json()
        assert (silence["matchers"], silence["created_by"]) == ({"kind": "test_critical"}, ACTOR)
        lasts = datetime.fromisoformat(silence["ends_at"]) - datetime.fromisoformat(
            silence["starts_at"]
        )
        assert lasts == timedelta(hours=4)
        await row.get_by_role("button", name="expire").click()
        await expect(page.locator("#silences tr")).to_have_count(0, timeout=UI_TIMEOUT)
        assert (await http.get("/v1/silences")).json() == []

        assert await _panel_groups(page) == {group: "resolved", error_group: "acknowledged"}

        # Slack's "On-call view" link opens the Operations view on its group.
        await page.goto(f"{api_url}/dashboard?view=operations&alert_group={group}")
        await expect(page.locator(f"#operator-view [data-group={group}].focus")).to_be_visible(
            timeout=UI_TIMEOUT
        )
        assert errors == []


async def _panel_groups(page: Page) -> dict[str, str]:
    groups = await page.evaluate("window.switchboard.oncallGroups()")
    return {g["id"]: g["status"] for g in groups}
