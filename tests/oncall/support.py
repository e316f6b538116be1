"""Helpers for on-call tests: a stack whose escalations run on virtual time, with its own policy
file and its own Slack and PagerDuty sink, and ways to raise alerts and read what was sent."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from temporalio.testing import WorkflowEnvironment

from core.alerting import Severity, alert_kind
from core.audit import raise_alert
from core.settings import PAGERDUTY_SINK_PATH, SLACK_SINK_PATH, Settings
from devstack.oncall_sink import OncallSink
from devstack.ports import free_port
from tests.support import time_skipping_stack, wait_for

ADMIN = {"authorization": "Bearer sb_dev_admin_key"}

# Kinds only these tests raise (declared like every detector declares its own).
TEST_CRITICAL = alert_kind("test_critical", Severity.CRITICAL, "A critical test condition.")
TEST_ERROR = alert_kind("test_error", Severity.ERROR, "An error-level test condition.")

POLICY = """
routes:
  - name: critical
    match: {severity: critical}
    group_by: [kind]
    group_wait: 0s
    repeat_interval: 1h
    escalation:
      - {after: 0s, notify: [slack]}
      - {after: 10m, notify: [pagerduty]}
    repeat: {every: 30m, times: 3}
  - name: default
    group_by: [kind, partner_id]
    group_wait: 30s
    repeat_interval: 4h
    escalation:
      - {after: 0s, notify: [slack]}
inhibit:
  - source: {kind: gateway_redis_unreachable}
    target: {kind: "test_error"}
"""


@dataclass
class Oncall:
    """A running on-call stack: its database, api client, sink and virtual clock."""

    pool: asyncpg.Pool
    http: httpx.AsyncClient
    sink: OncallSink
    env: WorkflowEnvironment

    async def raise_alert(
        self, kind: Any = TEST_CRITICAL, key: str = "k1", times: int = 1, **details: Any
    ) -> int:
        """Record ``times`` occurrences of one alert; returns its id."""
        async with self.pool.acquire() as conn:
            for _ in range(times):
                async with conn.transaction():
                    await raise_alert(
                        conn,
                        kind,
                        dedup_key=f"{kind.name}:{key}",
                        summary=f"{kind.name} {key} is failing",
                        details=details,
                    )
        alert_id: int = await self.pool.fetchval(
            "SELECT id FROM alerts WHERE dedup_key = $1 ORDER BY id DESC LIMIT 1",
            f"{kind.name}:{key}",
        )
        return alert_id

    async def group_of(self, alert_id: int) -> str:
        async def routed() -> str | None:
            group: str | None = await self.pool.fetchval(
                "SELECT group_id FROM alerts WHERE id = $1", alert_id
            )
            return group

        return await wait_for(routed, what=f"alert {alert_id} to be routed")

    async def timeline(self, group_id: str) -> list[tuple[str, str | None]]:
        rows = await self.pool.fetch(
            "SELECT action, channel FROM alert_timeline WHERE group_id = $1 ORDER BY id", group_id
        )
        return [(row["action"], row["channel"]) for row in rows]

    async def wait_timeline(self, group_id: str, entry: tuple[str, str | None]) -> None:
        async def present() -> bool:
            return entry in await self.timeline(group_id)

        await wait_for(present, what=f"{entry} in group {group_id}'s timeline")

    def pages(self) -> list[dict[str, Any]]:
        """PagerDuty events the sink accepted (202)."""
        return [c["body"] for c in self.sink.calls("pagerduty") if c["status"] == 202]

    def slack_posts(self) -> list[dict[str, Any]]:
        return [
            c["body"]
            for c in self.sink.calls("slack")
            if c["method"] == "chat.postMessage" and c["status"] == 200
        ]


@contextlib.asynccontextmanager
async def oncall_stack(
    env: WorkflowEnvironment,
    postgres_admin_url: str,
    settings: Settings,
    tmp_path: Path,
    policy: str = POLICY,
    **overrides: Any,
) -> AsyncIterator[Oncall]:
    """A virtual-time stack with its own policy file and its own Slack and PagerDuty sink."""
    policy_file = tmp_path / "alerting.yaml"
    policy_file.write_text(textwrap.dedent(policy))
    with OncallSink(free_port()) as sink:
        async with time_skipping_stack(
            env,
            postgres_admin_url,
            settings,
            alerting_policy=policy_file,
            slack_base_url=f"{sink.url}{SLACK_SINK_PATH}",
            pagerduty_base_url=f"{sink.url}{PAGERDUTY_SINK_PATH}",
            **overrides,
        ) as (pool, http, _):
            yield Oncall(pool, http, sink, env)
