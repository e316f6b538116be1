"""Notification activities: tell Slack and PagerDuty about an alert group, and keep its timeline.

One activity, :meth:`NotifyActivities.notify`, does what the escalation workflow decided, on
every channel it names, idempotently under retries:

* **trigger**: unless a silence or an inhibiting alert holds it back, post the group's Slack
  message (or, for a later step, a reply in its thread) and trigger the PagerDuty incident whose
  ``dedup_key`` is the group's; a step already recorded in the timeline is not sent again.
* **summary**: new occurrences since the last summary, as one reply in the Slack thread.
* **acknowledge** / **resolve**: update the Slack message and thread, acknowledge or resolve the
  incident, and write the group's (and on resolve every alert's) new state.

Slack is reached through ``slack-sdk`` and PagerDuty through the ``pagerduty`` package, both
at configurable base URLs. A failure raises so Temporal retries it durably; a 429 retries after
its ``Retry-After``. The clients' own retry loops are switched off: Temporal owns retrying.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pagerduty
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.alert_policy import RoutingPolicy, labels_of, matches
from core.audit import audit
from core.contracts import (
    NOTIFY_ACTIVITY,
    NotifyAction,
    NotifyInput,
    NotifyResult,
    escalation_workflow_id,
    webhook_workflow_id,
)
from core.db import Connection
from core.settings import Settings

__all__ = ["NotifyActivities", "PagerDuty", "Slack", "pagerduty_dedup_key"]

# While an inhibiting alert is open, look again this often.
INHIBITED_RECHECK = timedelta(minutes=1)
_ICONS = {"critical": ":red_circle:", "error": ":large_orange_circle:", "warning": ":warning:"}


def pagerduty_dedup_key(group_id: str) -> str:
    """The PagerDuty ``dedup_key`` of an alert group: one incident per group, ever."""
    return f"switchboard-{group_id}"


class Slack:
    """The few Slack Web API calls we make (``slack-sdk``'s client, in a thread)."""

    def __init__(self, settings: Settings) -> None:
        self.channel = settings.slack_channel
        self._client = WebClient(
            token=settings.slack_bot_token.get_secret_value(),
            base_url=settings.slack_base_url,
            timeout=10,
            retry_handlers=[],
        )

    async def post(self, text: str, blocks: list[dict[str, Any]]) -> tuple[str, str]:
        """Post a message; returns its channel id and ``ts``."""
        response = await self._call(
            self._client.chat_postMessage, channel=self.channel, text=text, blocks=blocks
        )
        return str(response["channel"]), str(response["ts"])

    async def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]]) -> None:
        await self._call(self._client.chat_update, channel=channel, ts=ts, text=text, blocks=blocks)

    async def reply(self, channel: str, ts: str, text: str) -> None:
        await self._call(self._client.chat_postMessage, channel=channel, thread_ts=ts, text=text)

    @staticmethod
    async def _call(method: Any, **arguments: Any) -> Any:
        try:
            return await asyncio.to_thread(method, **arguments)
        except SlackApiError as error:
            response = error.response
            raise _retryable(
                f"Slack {response.status_code}: {response.get('error')}",
                response.status_code,
                response.headers.get("Retry-After") or response.headers.get("retry-after"),
            ) from None


class PagerDuty:
    """PagerDuty Events API v2 through the ``pagerduty`` package (in a thread)."""

    def __init__(self, settings: Settings) -> None:
        base_url = settings.pagerduty_base_url
        client = pagerduty.EventsApiV2Client(settings.pagerduty_routing_key.get_secret_value())
        if base_url.startswith(("http://127.", "http://localhost")):
            # The package insists on https; the dev stack's sink is plain HTTP on loopback
            # (settings refuse a loopback URL in production).
            client._url = base_url
        else:
            client.url = base_url
        # Hand every non-2xx straight back (no sleeping retry loop inside an activity):
        # a status with retry logic returns at once when the attempt budget is already spent.
        client.retry = {429: 1, 500: 1, 502: 1, 503: 1, 504: 1}
        client.max_http_attempts = -1
        client.max_network_attempts = 0
        client.timeout = 10
        self._client = client

    def close(self) -> None:
        self._client.close()

    async def trigger(self, dedup_key: str, **fields: Any) -> None:
        await self._send(
            lambda: self._client.trigger(dedup_key=dedup_key, **fields),
        )

    async def acknowledge(self, dedup_key: str) -> None:
        await self._send(lambda: self._client.acknowledge(dedup_key))

    async def resolve(self, dedup_key: str) -> None:
        await self._send(lambda: self._client.resolve(dedup_key))

    @staticmethod
    async def _send(call: Any) -> None:
        try:
            await asyncio.to_thread(call)
        except pagerduty.Error as error:
            response = error.response
            if response is None:
                raise ApplicationError(f"PagerDuty unreachable: {error}") from None
            raise _retryable(
                f"PagerDuty {response.status_code}: {response.text[:200]}",
                response.status_code,
                response.headers.get("Retry-After"),
            ) from None


def _retryable(message: str, status: int, retry_after: str | None) -> ApplicationError:
    delay = None
    if status == 429 and retry_after and retry_after.isdigit():
        delay = timedelta(seconds=min(int(retry_after), 3600))
    # 4xx other than 429 will not pass on retry, but a page must not be dropped silently:
    # it keeps retrying (visible in the Web UI and the logs) until someone fixes the setting.
    return ApplicationError(message, type=f"Http{status}", next_retry_delay=delay)


class NotifyActivities:
    """Notifies an alert group's channels and records what happened in its timeline."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        slack: Slack,
        pagerduty_client: PagerDuty,
        policy: RoutingPolicy,
        settings: Settings,
    ) -> None:
        self._pool = pool
        self._slack = slack
        self._pagerduty = pagerduty_client
        self._policy = policy
        self._settings = settings

    @activity.defn(name=NOTIFY_ACTIVITY)
    async def notify(self, request: NotifyInput) -> NotifyResult:
        """Carry out one notification of an alert group (see the module docstring)."""
        async with self._pool.acquire() as conn:
            group = await conn.fetchrow(
                "SELECT * FROM alert_groups WHERE id = $1", request.group_id
            )
            if group is None:
                raise ApplicationError(f"no alert group {request.group_id}", non_retryable=True)
            alerts = await conn.fetch(
                "SELECT a.*, w.partner_id AS webhook_partner, w.webhook_id, w.run_count"
                " FROM alerts a LEFT JOIN webhooks w ON w.event_id = a.details->>'event_id'"
                " WHERE a.group_id = $1 ORDER BY a.id",
                request.group_id,
            )
            open_alerts = sum(1 for alert in alerts if alert["status"] != "resolved")
            if request.action == NotifyAction.TRIGGER:
                at = datetime.fromisoformat(request.at)
                held_until = await self._held_until(conn, group, alerts, at)
                if held_until is not None:
                    await _timeline_once(
                        conn, group["id"], "held", None, request.step, f"until {held_until}"
                    )
                    return NotifyResult(held_until.isoformat(), open_alerts)
                await self._trigger(conn, group, alerts, request)
            elif request.action == NotifyAction.SUMMARY:
                await self._summary(conn, group, alerts)
            elif request.action == NotifyAction.ACKNOWLEDGE:
                await self._acknowledge(
                    conn, group, alerts, request.actor or "someone", request.channels
                )
            else:
                await self._resolve(conn, group, alerts, request)
                open_alerts = 0
        return NotifyResult(None, open_alerts)

    async def _held_until(
        self, conn: Connection, group: asyncpg.Record, alerts: list[asyncpg.Record], now: datetime
    ) -> datetime | None:
        """When a silence covering every alert of the group ends, or when to look again while
        an inhibiting alert is open; None if nothing holds the group back (as of ``now``)."""
        labelled = [labels_of(a["kind"], a["severity"], a["details"]) for a in alerts]
        if not labelled:
            return None
        silences = await conn.fetch(
            "SELECT matchers, ends_at FROM silences WHERE starts_at <= $1 AND ends_at > $1",
            now,
        )

        def silenced_until(labels: dict[str, str]) -> datetime | None:
            covering = [s["ends_at"] for s in silences if matches(s["matchers"], labels)]
            return max(covering) if covering else None

        ends = [silenced_until(labels) for labels in labelled]
        if all(end is not None for end in ends):
            return min(end for end in ends if end is not None)
        for rule in self._policy.inhibit:
            targets = [labels for labels in labelled if matches(rule.target, labels)]
            if len(targets) != len(labelled):
                continue
            sources = await conn.fetch(
                "SELECT kind, severity, details FROM alerts WHERE status <> 'resolved'"
                " AND (group_id IS NULL OR group_id <> $1)",
                group["id"],
            )
            for source in sources:
                source_labels = labels_of(source["kind"], source["severity"], source["details"])
                if matches(rule.source, source_labels) and all(
                    source_labels.get(label) == targets[0].get(label) for label in rule.equal
                ):
                    return now + INHIBITED_RECHECK
        return None

    async def _trigger(
        self,
        conn: Connection,
        group: asyncpg.Record,
        alerts: list[asyncpg.Record],
        request: NotifyInput,
    ) -> None:
        for channel in request.channels:
            if await _in_timeline(conn, group["id"], "notified", channel, request.step):
                continue  # a retry after this channel already went out
            if channel == "slack":
                if group["slack_ts"] is None:
                    text, blocks = self._message(group, alerts, state=None)
                    slack_channel, ts = await self._slack.post(text, blocks)
                    await conn.execute(
                        "UPDATE alert_groups SET slack_channel = $2, slack_ts = $3 WHERE id = $1",
                        group["id"],
                        slack_channel,
                        ts,
                    )
                else:
                    await self._slack.reply(
                        group["slack_channel"],
                        group["slack_ts"],
                        f"Escalated (step {request.step + 1}): still not acknowledged.",
                    )
            else:
                await self._pagerduty.trigger(
                    pagerduty_dedup_key(group["id"]),
                    summary=group["summary"][:1024],
                    source="switchboard",
                    severity=group["severity"],
                    custom_details=self._details(group, alerts),
                    links=self._links(group, alerts),
                )
                await conn.execute(
                    "UPDATE alert_groups SET pages = pages + 1 WHERE id = $1", group["id"]
                )
            await _timeline(
                conn, group["id"], "notified", channel, request.step, f"step {request.step + 1}"
            )

    async def _summary(
        self, conn: Connection, group: asyncpg.Record, alerts: list[asyncpg.Record]
    ) -> None:
        occurrences = sum(alert["occurrences"] for alert in alerts)
        new = occurrences - group["summarized"]
        if new <= 0:
            return
        if group["slack_ts"] is not None:
            await self._slack.reply(
                group["slack_channel"],
                group["slack_ts"],
                f"{new} more occurrence(s); {occurrences} in all, {len(alerts)} alert(s).",
            )
        await conn.execute(
            "UPDATE alert_groups SET summarized = $2 WHERE id = $1", group["id"], occurrences
        )

    async def _acknowledge(
        self,
        conn: Connection,
        group: asyncpg.Record,
        alerts: list[asyncpg.Record],
        actor: str,
        channels: list[str],
    ) -> None:
        async with conn.transaction():
            # The row decides, not the copy read earlier: a concurrent call (the update's record
            # and the escalation's own notification) must not record it twice.
            changed = await conn.fetchval(
                "UPDATE alert_groups SET status = 'acknowledged',"
                " acknowledged_at = clock_timestamp(), acknowledged_by = $2"
                " WHERE id = $1 AND status = 'open' RETURNING true",
                group["id"],
                actor,
            )
            if changed:
                await audit(
                    conn,
                    "alert_group",
                    str(group["id"]),
                    "open",
                    "acknowledged",
                    actor=actor,
                    reason=None,
                )
                await _timeline(conn, group["id"], "acknowledged", None, 0, None, actor=actor)
        await self._tell_state(
            conn, group, alerts, "acknowledged", channels, actor, f"Acknowledged by {actor}"
        )

    async def _resolve(
        self,
        conn: Connection,
        group: asyncpg.Record,
        alerts: list[asyncpg.Record],
        request: NotifyInput,
    ) -> None:
        actor = request.actor or "switchboard"
        reason = request.reason or "resolved"
        async with conn.transaction():
            before = await conn.fetchval(
                "SELECT status FROM alert_groups WHERE id = $1 FOR UPDATE", group["id"]
            )
            if before != "resolved":
                resolved = await conn.fetch(
                    "UPDATE alerts SET status = 'resolved', resolved_at = now(), resolved_by = $2"
                    " WHERE group_id = $1 AND status <> 'resolved' RETURNING id",
                    group["id"],
                    actor,
                )
                for alert in resolved:
                    await audit(
                        conn,
                        "alert",
                        str(alert["id"]),
                        "open",
                        "resolved",
                        actor=actor,
                        reason=reason,
                    )
                await conn.execute(
                    "UPDATE alert_groups SET status = 'resolved', resolved_at = clock_timestamp(),"
                    " resolved_by = $2 WHERE id = $1",
                    group["id"],
                    actor,
                )
                await audit(
                    conn,
                    "alert_group",
                    str(group["id"]),
                    before,
                    "resolved",
                    actor=actor,
                    reason=reason,
                )
                await _timeline(conn, group["id"], "resolved", None, 0, reason, actor=actor)
        await self._tell_state(
            conn,
            group,
            alerts,
            "resolved",
            request.channels,
            actor,
            f"Resolved by {actor}: {reason}",
        )

    async def _tell_state(
        self,
        conn: Connection,
        group: asyncpg.Record,
        alerts: list[asyncpg.Record],
        action: str,
        channels: list[str],
        actor: str,
        state: str,
    ) -> None:
        """Tell each channel the group was acknowledged or resolved, once: PagerDuty (if it was
        paged) and the Slack message (updated, and a reply in its thread)."""
        told = {
            channel
            for channel in ("pagerduty", "slack")
            if await _in_timeline(conn, group["id"], action, channel, 0)
        }
        if "pagerduty" in channels and group["pages"] and "pagerduty" not in told:
            key = pagerduty_dedup_key(group["id"])
            if action == "acknowledged":
                await self._pagerduty.acknowledge(key)
            else:
                await self._pagerduty.resolve(key)
            await _timeline(conn, group["id"], action, "pagerduty", 0, None, actor=actor)
        if "slack" in channels and group["slack_ts"] is not None and "slack" not in told:
            text, blocks = self._message(group, alerts, state=state)
            await self._slack.update(group["slack_channel"], group["slack_ts"], text, blocks)
            await self._slack.reply(group["slack_channel"], group["slack_ts"], state + ".")
            await _timeline(conn, group["id"], action, "slack", 0, None, actor=actor)

    def _message(
        self, group: asyncpg.Record, alerts: list[asyncpg.Record], *, state: str | None
    ) -> tuple[str, list[dict[str, Any]]]:
        """The group's Slack message: severity, summary, count, links, and the Acknowledge
        button while nobody has (``state`` replaces it once someone has)."""
        occurrences = sum(alert["occurrences"] for alert in alerts)
        icon = _ICONS.get(group["severity"], ":information_source:")
        text = f"{icon} [{group['severity'].upper()}] {group['summary']}"
        links = " · ".join(
            f"<{link['href']}|{link['text']}>" for link in self._links(group, alerts)
        )
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{text}*"}},
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"{group['kind']} · route {group['route']}"
                        f" · {len(alerts)} alert(s), {occurrences} occurrence(s) · {links}",
                    }
                ],
            },
        ]
        if state is None:
            blocks.append(
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "action_id": "acknowledge",
                            "text": {"type": "plain_text", "text": "Acknowledge"},
                            "value": str(group["id"]),
                            "style": "primary",
                        }
                    ],
                }
            )
        else:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": state}]})
        return text, blocks

    def _links(self, group: asyncpg.Record, alerts: list[asyncpg.Record]) -> list[dict[str, str]]:
        base = self._settings.public_base_url
        links = [
            {
                "href": f"{base}/dashboard?view=operations&alert_group={group['id']}",
                "text": "On-call view",
            },
            {
                "href": self._settings.workflow_ui_url(escalation_workflow_id(group["id"])),
                "text": "Escalation in Temporal",
            },
        ]
        # The first alert about a webhook: its trace, and its workflow in the Web UI.
        about = next((a for a in alerts if a["webhook_id"] is not None), None)
        if about is not None:
            links.append(
                {"href": f"{base}/v1/webhooks/{about['details']['event_id']}", "text": "Trace"}
            )
            workflow_id = webhook_workflow_id(
                about["webhook_partner"], about["webhook_id"], about["run_count"]
            )
            links.append(
                {"href": self._settings.workflow_ui_url(workflow_id), "text": "Webhook workflow"}
            )
        return links

    @staticmethod
    def _details(group: asyncpg.Record, alerts: list[asyncpg.Record]) -> dict[str, Any]:
        return {
            "kind": group["kind"],
            "route": group["route"],
            "alerts": len(alerts),
            "occurrences": sum(alert["occurrences"] for alert in alerts),
            "first": dict(alerts[0]["details"]) if alerts else {},
        }


async def _in_timeline(
    conn: Connection, group_id: str, action: str, channel: str | None, step: int
) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM alert_timeline WHERE group_id = $1 AND action = $2"
        " AND channel IS NOT DISTINCT FROM $3 AND step = $4",
        group_id,
        action,
        channel,
        step,
    )
    return bool(found)


async def _timeline(
    conn: Connection,
    group_id: str,
    action: str,
    channel: str | None,
    step: int,
    detail: str | None,
    *,
    actor: str = "switchboard",
) -> None:
    await conn.execute(
        "INSERT INTO alert_timeline (group_id, action, channel, step, actor, detail)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        group_id,
        action,
        channel,
        step,
        actor,
        detail,
    )


async def _timeline_once(
    conn: Connection, group_id: str, action: str, channel: str | None, step: int, detail: str
) -> None:
    if not await _in_timeline(conn, group_id, action, channel, step):
        await _timeline(conn, group_id, action, channel, step, detail)
