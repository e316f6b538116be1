"""Escalations on virtual time, against a real Postgres and the real Slack and PagerDuty sink:
one group per storm, pages exactly at the configured steps, acknowledgements, resolutions,
silences, inhibition, and channels that fail for a while."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest
from slack_sdk.signature import SignatureVerifier
from temporalio.testing import WorkflowEnvironment

from activities.notify import pagerduty_dedup_key
from core.audit import resolve_alert
from core.contracts import webhook_workflow_id
from core.settings import DEV_SLACK_SIGNING_SECRET, Settings
from tests.oncall.support import ADMIN, TEST_ERROR, Oncall, oncall_stack
from tests.support import add_partner, wait_for, wait_settled


@pytest.fixture
async def oncall(
    time_skipping: WorkflowEnvironment, postgres_admin_url: str, settings: Settings, tmp_path: Path
) -> AsyncIterator[Oncall]:
    async with oncall_stack(time_skipping, postgres_admin_url, settings, tmp_path) as stack:
        yield stack


async def test_a_storm_of_identical_failures_is_one_group_one_message_one_incident(
    oncall: Oncall,
) -> None:
    """1,000 occurrences in a minute: one alert counting them, one group, one Slack message;
    no acknowledgement, so PagerDuty is paged at 10 min, then every 30 min three more times,
    always the same incident, and never again after that."""
    alert_id = await oncall.raise_alert(key="storm", times=1000)
    group_id = await oncall.group_of(alert_id)
    await oncall.wait_timeline(group_id, ("notified", "slack"))
    assert await oncall.pool.fetchval("SELECT count(*) FROM alert_groups") == 1
    assert (
        await oncall.pool.fetchval("SELECT occurrences FROM alerts WHERE id = $1", alert_id) == 1000
    )
    assert len(oncall.slack_posts()) == 1
    assert oncall.pages() == []

    await oncall.env.sleep(timedelta(minutes=9))
    assert oncall.pages() == []  # not before its step
    for minutes, expected in ((2, 1), (30, 2), (30, 3), (30, 4), (120, 4)):
        await oncall.env.sleep(timedelta(minutes=minutes))

        async def paged(expected: int = expected) -> bool:
            return len(oncall.pages()) == expected

        await wait_for(paged, what=f"{expected} page(s)")
    assert {page["dedup_key"] for page in oncall.pages()} == {pagerduty_dedup_key(group_id)}
    assert {page["event_action"] for page in oncall.pages()} == {"trigger"}
    incidents = oncall.sink.state.incidents
    assert list(incidents) == [pagerduty_dedup_key(group_id)]
    # Repeats went into the Slack thread as one summary, not as new messages.
    replies = [p for p in oncall.slack_posts() if p.get("thread_ts")]
    assert len(oncall.slack_posts()) - len(replies) == 1


async def test_an_acknowledgement_before_the_deadline_means_no_page(oncall: Oncall) -> None:
    alert_id = await oncall.raise_alert(key="acked")
    group_id = await oncall.group_of(alert_id)
    await oncall.wait_timeline(group_id, ("notified", "slack"))
    await oncall.env.sleep(timedelta(minutes=5))
    acked = await oncall.http.post(f"/v1/alerts/{alert_id}/acknowledge", headers=ADMIN)
    assert acked.status_code == 200, acked.text
    assert acked.json()["acknowledged_by"] == "api-key:bootstrap"
    again = await oncall.http.post(f"/v1/alerts/{alert_id}/acknowledge", headers=ADMIN)
    assert again.status_code == 409
    assert "already acknowledged" in again.json()["detail"]
    await oncall.wait_timeline(group_id, ("acknowledged", "slack"))
    await oncall.env.sleep(timedelta(hours=3))
    assert oncall.pages() == []
    updates = [c["body"] for c in oncall.sink.calls("slack") if c["method"] == "chat.update"]
    assert any("Acknowledged by api-key:bootstrap" in str(u["blocks"]) for u in updates)


async def test_resolving_closes_the_incident_with_the_same_dedup_key(oncall: Oncall) -> None:
    alert_id = await oncall.raise_alert(key="resolved")
    group_id = await oncall.group_of(alert_id)
    await oncall.env.sleep(timedelta(minutes=11))
    await oncall.wait_timeline(group_id, ("notified", "pagerduty"))
    resolved = await oncall.http.post(
        f"/v1/alerts/{alert_id}/resolve", json={"reason": "fixed the card network"}, headers=ADMIN
    )
    assert resolved.status_code == 200, resolved.text
    await oncall.wait_timeline(group_id, ("resolved", "pagerduty"))
    assert [p["event_action"] for p in oncall.pages()] == ["trigger", "resolve"]
    assert {p["dedup_key"] for p in oncall.pages()} == {pagerduty_dedup_key(group_id)}
    assert oncall.sink.state.incidents[pagerduty_dedup_key(group_id)]["status"] == "resolved"
    again = await oncall.http.post(f"/v1/alerts/{alert_id}/resolve", json={}, headers=ADMIN)
    assert again.status_code == 409
    shown = (await oncall.http.get(f"/v1/alerts/{alert_id}", headers=ADMIN)).json()
    assert shown["status"] == "resolved" and shown["resolved_by"] == "api-key:bootstrap"
    assert [a["status"] for a in shown["alerts"]] == ["resolved"]
    actions = [entry["action"] for entry in shown["timeline"]]
    assert actions[0] == "opened" and actions[-1] == "resolved"


async def test_a_condition_that_clears_resolves_its_group(oncall: Oncall) -> None:
    alert_id = await oncall.raise_alert(key="clears")
    group_id = await oncall.group_of(alert_id)
    await oncall.wait_timeline(group_id, ("notified", "slack"))
    async with oncall.pool.acquire() as conn:
        assert await resolve_alert(conn, "test_critical:clears", reason="drained")

    async def resolved() -> bool:
        status = await oncall.pool.fetchval(
            "SELECT status FROM alert_groups WHERE id = $1", group_id
        )
        return bool(status == "resolved")

    await wait_for(resolved, what="the group to resolve itself")
    await oncall.env.sleep(timedelta(hours=2))
    assert oncall.pages() == []


async def test_pagerduty_failing_for_a_while_still_gets_the_page_exactly_once(
    oncall: Oncall,
) -> None:
    oncall.sink.arm("pagerduty", 500, times=3)
    alert_id = await oncall.raise_alert(key="pd-down")
    group_id = await oncall.group_of(alert_id)
    await oncall.env.sleep(timedelta(minutes=11))
    await oncall.wait_timeline(group_id, ("notified", "pagerduty"))
    refused = [c for c in oncall.sink.calls("pagerduty") if c["status"] == 500]
    assert len(refused) == 3
    assert len(oncall.pages()) == 1


async def test_a_rate_limited_channel_is_retried_after_its_retry_after(oncall: Oncall) -> None:
    oncall.sink.arm("slack", 429, times=2, retry_after=1)
    alert_id = await oncall.raise_alert(key="slack-429")
    group_id = await oncall.group_of(alert_id)
    await oncall.wait_timeline(group_id, ("notified", "slack"))
    throttled = [c for c in oncall.sink.calls("slack") if c["status"] == 429]
    assert len(throttled) == 2
    assert len(oncall.slack_posts()) == 1


async def test_a_silence_holds_notifications_back_until_it_ends(oncall: Oncall) -> None:
    silenced = await oncall.http.post(
        "/v1/silences",
        json={
            "matchers": {"kind": "test_critical"},
            # Silences are judged on the escalation's clock, here the virtual one.
            "starts_at": (await oncall.env.get_current_time()).isoformat(),
            "duration_seconds": 3600,
            "comment": "maintenance of the card network",
        },
        headers=ADMIN,
    )
    assert silenced.status_code == 201, silenced.text
    alert_id = await oncall.raise_alert(key="silenced")
    group_id = await oncall.group_of(alert_id)
    await oncall.wait_timeline(group_id, ("held", None))
    await oncall.env.sleep(timedelta(minutes=30))
    assert oncall.slack_posts() == [] and oncall.pages() == []
    await oncall.env.sleep(timedelta(minutes=31))
    await oncall.wait_timeline(group_id, ("notified", "slack"))


async def test_an_open_source_alert_inhibits_its_targets(oncall: Oncall) -> None:
    from gateway.server import REDIS_UNREACHABLE

    await oncall.raise_alert(REDIS_UNREACHABLE, key="gw-1")
    target = await oncall.raise_alert(TEST_ERROR, key="symptom", partner_id="p1")
    group_id = await oncall.group_of(target)
    await oncall.env.sleep(timedelta(seconds=31))  # the route's group_wait
    await oncall.wait_timeline(group_id, ("held", None))
    texts = [str(p.get("text")) for p in oncall.slack_posts()]
    assert not any("test_error" in text for text in texts)


async def test_slack_acknowledge_button_is_verified_and_accepted_once(oncall: Oncall) -> None:
    """The Acknowledge button's callback: forged and stale ones are refused (401), a genuine one
    acknowledges the group as that Slack user, and the same callback replayed is refused (409)."""
    alert_id = await oncall.raise_alert(key="slack-button")
    group_id = await oncall.group_of(alert_id)
    await oncall.wait_timeline(group_id, ("notified", "slack"))
    payload = {
        "type": "block_actions",
        "user": {"id": "U123", "username": "alice"},
        "actions": [{"action_id": "acknowledge", "value": group_id}],
    }
    body = urlencode({"payload": json.dumps(payload)}).encode()

    def signed(secret: str, timestamp: int) -> dict[str, str]:
        signature = SignatureVerifier(secret).generate_signature(
            timestamp=str(timestamp), body=body
        )
        assert signature is not None
        return {
            "x-slack-request-timestamp": str(timestamp),
            "x-slack-signature": signature,
            "content-type": "application/x-www-form-urlencoded",
        }

    now = int(time.time())
    forged = await oncall.http.post(
        "/slack/interactions", content=body, headers=signed("not-the-secret", now)
    )
    assert forged.status_code == 401
    stale = await oncall.http.post(
        "/slack/interactions", content=body, headers=signed(DEV_SLACK_SIGNING_SECRET, now - 600)
    )
    assert stale.status_code == 401
    genuine = signed(DEV_SLACK_SIGNING_SECRET, now)
    accepted = await oncall.http.post("/slack/interactions", content=body, headers=genuine)
    assert accepted.status_code == 200, accepted.text
    replayed = await oncall.http.post("/slack/interactions", content=body, headers=genuine)
    assert replayed.status_code == 409
    group = (await oncall.http.get(f"/v1/alerts/{alert_id}", headers=ADMIN)).json()
    assert group["status"] == "acknowledged" and group["acknowledged_by"] == "slack:alice"
    await oncall.wait_timeline(group_id, ("acknowledged", "slack"))


async def test_an_alert_about_a_webhook_links_its_trace_and_workflow(oncall: Oncall) -> None:
    """On-call goes from the page to the cause in one click: the Slack message and the
    PagerDuty event of an alert raised about a webhook link its trace and its workflow."""
    partner = await add_partner(oncall.pool, oncall.http, onboarding=False)
    event_id = await partner.send(
        "payment.succeeded", payment_id="pay_l", merchant_id="m-nobody", amount=5, currency="EUR"
    )
    await wait_settled(oncall.pool, [event_id])
    alert_id = await oncall.pool.fetchval(
        "SELECT id FROM alerts WHERE kind = 'unlinked_merchant' AND details->>'event_id' = $1",
        event_id,
    )
    group_id = await oncall.group_of(alert_id)
    await oncall.env.sleep(timedelta(seconds=31))  # the route's group_wait
    await oncall.wait_timeline(group_id, ("notified", "slack"))
    (post,) = oncall.slack_posts()
    text = json.dumps(post["blocks"])
    assert f"/v1/webhooks/{event_id}" in text
    assert webhook_workflow_id(partner.id, (await _webhook_id(oncall, event_id)), 0) in text
    assert f"alert-group:{group_id}" in text


async def _webhook_id(oncall: Oncall, event_id: str) -> str:
    webhook_id: str = await oncall.pool.fetchval(
        "SELECT webhook_id FROM webhooks WHERE event_id = $1", event_id
    )
    return webhook_id
