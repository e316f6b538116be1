"""What a workflow costs in Temporal: history events, workflow tasks and billable actions.

Counted from each workflow's event history, the way Temporal Cloud bills "actions":

* 1 for the workflow start (search attributes given at start are free);
* 1 per *batch* of local activities, i.e. per workflow task whose completion recorded at least
  one local-activity marker (all local activities of one workflow task count as one action);
* 1 per activity scheduled, plus 1 per retry of it;
* 1 per timer started, per signal received, per search-attribute upsert, per child workflow
  started and per update accepted or rejected.

Workflow tasks themselves, queries, heartbeats and patch markers are not in this count (tasks are
not billed; the others do not occur on this path). Signals are counted where they are received, so
a signal between two sampled workflows is not counted twice. One caveat: a local activity that
outlives a workflow task is kept alive by extra workflow tasks, which Cloud may bill as well;
the workflow-tasks figure shows when that happens (more tasks than local-activity batches).

Histories are read once the workflow has completed, so none is counted half-way.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory

from benchmarks.stats import median

__all__ = ["ACTION_RULES", "HistoryCost", "MeanCost", "history_costs", "mean_cost"]

LOCAL_ACTIVITY_MARKER = "core_local_activity"
FETCH_CONCURRENCY = 8

ACTION_RULES = (
    "1 per workflow start, 1 per workflow task that ran local activities (one batch), 1 per "
    "activity scheduled or retried, 1 per timer, signal received, search-attribute upsert, "
    "child workflow start or update; workflow tasks themselves are not billed"
)

_ONE_ACTION_EACH = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "workflow started",
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "activity scheduled",
    EventType.EVENT_TYPE_TIMER_STARTED: "timer started",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: "signal received",
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES: "search attributes upserted",
    EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED: "child workflow started",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "update",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_REJECTED: "update",
}


@dataclass(frozen=True)
class HistoryCost:
    """The Temporal cost of one workflow execution."""

    events: int
    workflow_tasks: int
    actions: int
    breakdown: Counter[str]

    @classmethod
    def of(cls, history: WorkflowHistory) -> HistoryCost:
        events = list(history.events)
        breakdown = Counter(_actions(events))
        tasks = sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED for e in events)
        return cls(len(events), tasks, sum(breakdown.values()), breakdown)


def _actions(events: list[HistoryEvent]) -> Iterable[str]:
    local_activity_batches: set[int] = set()
    for event in events:
        if event.event_type in _ONE_ACTION_EACH:
            yield _ONE_ACTION_EACH[event.event_type]
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            yield from ["activity retried"] * (
                event.activity_task_started_event_attributes.attempt - 1
            )
        elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = event.marker_recorded_event_attributes
            if marker.marker_name == LOCAL_ACTIVITY_MARKER:
                local_activity_batches.add(marker.workflow_task_completed_event_id)
    yield from ["local activity batch"] * len(local_activity_batches)


async def history_costs(
    client: Client, workflow_ids: list[str], *, timeout: float
) -> list[HistoryCost]:
    """The cost of each of ``workflow_ids``, once completed (waiting at most ``timeout`` s)."""
    limit = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def one(workflow_id: str) -> HistoryCost:
        handle = client.get_workflow_handle(workflow_id)
        async with limit:
            async with asyncio.timeout(timeout):
                await handle.result()
            return HistoryCost.of(await handle.fetch_history())

    return list(await asyncio.gather(*map(one, workflow_ids)))


@dataclass(frozen=True)
class MeanCost:
    """Per-workflow averages over a sample, and the breakdown of actions over the sample."""

    samples: int
    events: float
    workflow_tasks: float
    actions: float
    median_actions: float
    breakdown: dict[str, float]


def mean_cost(costs: list[HistoryCost]) -> MeanCost:
    """Average cost per workflow of a sample (NaN figures for an empty sample)."""
    n = len(costs) or float("nan")
    total: Counter[str] = Counter()
    for cost in costs:
        total.update(cost.breakdown)
    return MeanCost(
        samples=len(costs),
        events=sum(c.events for c in costs) / n,
        workflow_tasks=sum(c.workflow_tasks for c in costs) / n,
        actions=sum(c.actions for c in costs) / n,
        median_actions=median([float(c.actions) for c in costs]),
        breakdown={name: count / n for name, count in sorted(total.items())},
    )
