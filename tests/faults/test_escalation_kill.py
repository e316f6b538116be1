"""P6 (RELIABILITY.md §1): the worker killed and the Temporal dev server restarted while an
escalation waits; the page still fires once, on time.

Real time on a dev server of its own with a data dir (persistent SQLite). The worker is a real
child process. The policy's critical route posts to Slack at once and pages PagerDuty
``PAGE_AFTER`` later. Once the Slack post arrives, the worker is SIGKILLed, the server stopped
and started again on the same data, and a new worker started, all inside that wait. The sink
(a real HTTP server recording every call) must then get exactly one PagerDuty trigger, none
before its due time (the workflow's start + ``PAGE_AFTER``) and at most ``LATENESS_BOUND`` after
it. Once the workflow has recorded the page and moved on to its next timer no retry can send
it again, so that is when the count is taken.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
import time
from datetime import timedelta
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from activities.notify import pagerduty_dedup_key
from core.audit import raise_alert
from core.settings import PAGERDUTY_SINK_PATH, SLACK_SINK_PATH, Settings
from devstack.oncall_sink import OncallSink
from devstack.ports import free_port
from tests.conftest import temporal_dev_server
from tests.faults.workload import WorkerProcess
from tests.oncall.support import TEST_CRITICAL
from tests.support import isolated_settings, stores, wait_for

PAGE_AFTER = timedelta(seconds=12)
LATENESS_BOUND = timedelta(seconds=30)
"""RELIABILITY.md P6: the page fires in [T, T + 30 s]."""

POLICY = f"""
routes:
  - name: critical
    match: {{severity: critical}}
    group_by: [kind]
    group_wait: 0s
    repeat_interval: 1h
    escalation:
      - {{after: 0s, notify: [slack]}}
      - {{after: {int(PAGE_AFTER.total_seconds())}s, notify: [pagerduty]}}
  - name: default
    escalation:
      - {{after: 0s, notify: [slack]}}
"""
ONCALL_SETTINGS = (
    "oncall_task_queue",
    "alerting_policy",
    "slack_base_url",
    "pagerduty_base_url",
    "monitor_schedule",
)
log = logging.getLogger(__name__)


async def test_the_page_fires_once_on_time_across_a_worker_kill_and_a_server_restart(
    postgres_admin_url: str, settings: Settings, tmp_path: Path
) -> None:
    """Worker SIGKILLed and Temporal restarted mid-wait: one page, in [due, due + 30 s]."""
    policy = tmp_path / "alerting.yaml"
    policy.write_text(textwrap.dedent(POLICY))
    server = temporal_dev_server(tmp_path / "temporal")
    await asyncio.to_thread(server.start)
    marks: dict[str, float] = {}
    try:
        with OncallSink(free_port()) as sink:
            settings = await isolated_settings(
                settings,
                postgres_admin_url,
                temporal_address=server.address,
                alerting_policy=policy,
                slack_base_url=f"{sink.url}{SLACK_SINK_PATH}",
                pagerduty_base_url=f"{sink.url}{PAGERDUTY_SINK_PATH}",
                monitor_schedule=False,
            )
            client = await Client.connect(server.address)
            worker = WorkerProcess(settings, tmp_path, forward=ONCALL_SETTINGS)
            worker.start()
            async with stores(settings) as (pool, _):
                try:
                    await worker.wait_ready()
                    async with pool.acquire() as conn, conn.transaction():
                        await raise_alert(
                            conn,
                            TEST_CRITICAL,
                            dedup_key="test_critical:p6",
                            summary="the card network is failing",
                            details={},
                        )

                    async def started() -> tuple[str, str] | None:
                        row = await pool.fetchrow(
                            "SELECT id, workflow_id FROM alert_groups WHERE workflow_id IS NOT NULL"
                        )
                        return (row["id"], row["workflow_id"]) if row else None

                    group_id, workflow_id = await wait_for(started, what="the escalation")
                    description = await client.get_workflow_handle(workflow_id).describe()
                    assert description.start_time is not None
                    due = (description.start_time + PAGE_AFTER).timestamp()

                    async def slack_posted() -> bool:
                        return any(c["status"] == 200 for c in sink.calls("slack"))

                    await wait_for(slack_posted, timeout=20, what="the Slack post")
                    await worker.kill()
                    marks["killed"] = time.time() - due
                    await asyncio.to_thread(server.stop)
                    await asyncio.to_thread(server.start)
                    marks["server_back"] = time.time() - due
                    assert time.time() < due, "the restart did not happen during the wait"
                    worker.start()
                    await worker.wait_ready()
                    marks["worker_back"] = time.time() - due

                    async def paged() -> bool:
                        return any(c["status"] == 202 for c in sink.calls("pagerduty"))

                    bound = due + LATENESS_BOUND.total_seconds() - time.time()
                    await wait_for(paged, timeout=max(bound, 0.1), interval=0.05, what="the page")
                    await wait_for(
                        lambda: _moved_past_the_page(client, workflow_id),
                        timeout=20,
                        what="the escalation to record the page and wait again",
                    )
                finally:
                    await worker.stop()

            calls = sink.calls("pagerduty")
            triggers = [c for c in calls if c["status"] == 202]
            lateness = triggers[0]["at"] - due
            log.info(
                "P6: the page came %.2f s after its due time; seconds from it: %s", lateness, marks
            )
            assert len(triggers) == 1, triggers
            assert [c for c in calls if c["at"] < due] == []
            assert triggers[0]["body"]["event_action"] == "trigger"
            assert triggers[0]["body"]["dedup_key"] == pagerduty_dedup_key(group_id)
            assert 0 <= lateness <= LATENESS_BOUND.total_seconds()
            assert sink.state.incidents[pagerduty_dedup_key(group_id)]["triggers"] == 1
    finally:
        await asyncio.to_thread(server.stop)


async def _moved_past_the_page(client: Client, workflow_id: str) -> bool:
    """Whether the escalation's notify activity completed and a timer started after it."""
    events = (await client.get_workflow_handle(workflow_id).fetch_history()).events
    completed = [
        i
        for i, event in enumerate(events)
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    ]
    return len(completed) >= 2 and any(
        event.event_type == EventType.EVENT_TYPE_TIMER_STARTED for event in events[completed[1] :]
    )
