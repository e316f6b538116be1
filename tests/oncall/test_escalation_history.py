"""RELIABILITY.md D6: an alert group that flaps 12,000 times keeps its escalation.

Each ``alerts_changed`` signal lands in the escalation's history and wakes a summary; a run that
never continued as new would pass the server's 10,240-event warning and, at 51,200 events, be
terminated. Real time on the session's Temporal dev server (whose limits are the ones that
matter here), a real Postgres and the real Slack and PagerDuty sink: one group gets ``SIGNALS``
signals in waves of ``WAVE``, then every run of its chain is read back by run id.

The waves keep the sender within what one workflow absorbs. Unthrottled (some 700 signals a
second here) more than 100 pile up behind a slow workflow task; the server then fails that task,
the worker replays the run from its first event, the next 100 arrive meanwhile, and the run
makes no progress until the 10,000-signals-per-run limit refuses the rest. No workflow code can
prevent that; the relay, which tells a group at most once per sweep, stays far below it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from core.contracts import escalation_workflow_id
from core.settings import Settings
from tests.oncall.support import ADMIN, Oncall, oncall_stack
from tests.support import wait_for
from workflows.escalation import HISTORY_BOUND, EscalationWorkflow

SIGNALS = 12_000
WAVE = 40
"""Signals sent at once; a wave goes once the one before the last was seen, so at most 80 are
unseen, below the 100 that make the server fail a running workflow task
(``history.maximumBufferedEventsBatch``)."""
WARN_EVENTS = 10_240
"""The server's warning line for one run's history (the hard limit is 51,200)."""
log = logging.getLogger(__name__)


@pytest.fixture
async def oncall(
    temporal_client: Client, postgres_admin_url: str, settings: Settings, tmp_path: Path
) -> AsyncIterator[Oncall]:
    env = WorkflowEnvironment.from_client(temporal_client)
    async with oncall_stack(env, postgres_admin_url, settings, tmp_path) as stack:
        yield stack


async def test_a_flapping_group_continues_as_new_and_loses_no_signal(oncall: Oncall) -> None:
    """12,000 signals, acknowledged halfway: several runs, none past 10,240 events, every signal
    counted once (the count carried from run to run); later runs know the acknowledgement, and
    the group resolves once, without a run repeating its first notification."""
    alert_id = await oncall.raise_alert(key="flapping")
    group_id = await oncall.group_of(alert_id)
    await oncall.wait_timeline(group_id, ("notified", "slack"))
    client = oncall.env.client
    latest: WorkflowHandle[EscalationWorkflow, str] = client.get_workflow_handle_for(
        EscalationWorkflow.run, escalation_workflow_id(group_id)
    )
    first_run_id = (await latest.describe()).run_id

    started = time.monotonic()

    async def seen(count: int) -> bool:
        return await latest.query(EscalationWorkflow.changes_seen) >= count

    for sent in range(0, SIGNALS, WAVE):
        # Two waves in flight: signals keep arriving while a run continues as new.
        await wait_for(partial(seen, sent - WAVE), what=f"{sent - WAVE} signals to be seen")
        await asyncio.gather(
            *(latest.signal(EscalationWorkflow.alerts_changed) for _ in range(WAVE))
        )
        if sent == SIGNALS // 2:
            acked = await oncall.http.post(f"/v1/alerts/{alert_id}/acknowledge", headers=ADMIN)
            assert acked.status_code == 200, acked.text
    await wait_for(partial(seen, SIGNALS), what=f"{SIGNALS} signals to be seen")
    assert (await latest.describe()).run_id != first_run_id
    # Runs after the acknowledgement still know it.
    again = await oncall.http.post(f"/v1/alerts/{alert_id}/acknowledge", headers=ADMIN)
    assert again.status_code == 409
    assert "already acknowledged by api-key:bootstrap" in again.json()["detail"]
    await oncall.wait_timeline(group_id, ("acknowledged", "slack"))
    resolved = await oncall.http.post(
        f"/v1/alerts/{alert_id}/resolve", json={"reason": "stopped flapping"}, headers=ADMIN
    )
    assert resolved.status_code == 200, resolved.text
    outcome = await asyncio.wait_for(latest.result(), timeout=30)
    elapsed = time.monotonic() - started

    runs = await _runs(client, escalation_workflow_id(group_id), first_run_id)
    lengths = [len(events) for events in runs]
    signalled = [
        sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED for e in events)
        for events in runs
    ]
    log.info("%d signals in %.1f s: events %s, signals %s", SIGNALS, elapsed, lengths, signalled)
    assert len(runs) > 1
    assert all(length > HISTORY_BOUND for length in lengths[:-1])
    assert max(lengths) <= WARN_EVENTS
    assert sum(signalled) == SIGNALS
    assert await latest.query(EscalationWorkflow.changes_seen) == SIGNALS
    # The first step was carried, not repeated: one Slack message, the rest in its thread.
    assert outcome == "resolved by api-key:bootstrap after 1 step(s), 0 page(s)"
    assert len([post for post in oncall.slack_posts() if not post.get("thread_ts")]) == 1
    timeline = await oncall.timeline(group_id)
    assert timeline.count(("acknowledged", "slack")) == 1
    assert timeline.count(("resolved", "slack")) == 1
    assert oncall.pages() == []


async def _runs(client: Client, workflow_id: str, run_id: str) -> list[list[HistoryEvent]]:
    """The events of every run of one workflow, following continue-as-new from ``run_id``."""
    runs: list[list[HistoryEvent]] = []
    next_run: str | None = run_id
    while next_run is not None:
        history = await client.get_workflow_handle(workflow_id, run_id=next_run).fetch_history()
        runs.append(list(history.events))
        next_run = next(
            (
                e.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                for e in history.events
                if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
            ),
            None,
        )
    return runs
