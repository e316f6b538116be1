"""The alert relay: puts each newly opened alert in its group and starts the group's escalation.

``core.audit.raise_alert`` writes the alert and NOTIFYs in the detecting transaction. This relay
(in the worker process) routes every alert not yet grouped by the policy (``core/alerting.yaml``):
it joins the open group of its route's group key, or opens one and starts that group's
:class:`~workflows.escalation.EscalationWorkflow` (eager start, id ``alert-group:{id}``). A
repeat of an open alert never reaches here: it only counts in Postgres, costing no Temporal
action. When every alert of an open group has been resolved where it was detected, the relay
signals the group's workflow, which resolves the group.
"""

from __future__ import annotations

import asyncpg
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from core.alert_policy import RoutingPolicy, labels_of
from core.audit import audit
from core.contracts import (
    ALERTS_CHANNEL,
    EscalationInput,
    EscalationStepPlan,
    escalation_workflow_id,
)
from core.settings import Settings
from relays.loop import NotifiedRelay
from workflows.escalation import EscalationWorkflow

__all__ = ["AlertRelay"]

BATCH = 200

_OPEN_GROUP = """
WITH opened AS (
    INSERT INTO alert_groups (group_key, route, kind, severity, summary)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (group_key) WHERE status <> 'resolved' DO NOTHING
    RETURNING id, true AS created
)
SELECT id, created FROM opened
UNION ALL
SELECT id, false FROM alert_groups WHERE group_key = $1 AND status <> 'resolved'
LIMIT 1
"""


class AlertRelay(NotifiedRelay):
    """Routes new alerts into groups and tells escalations; see the module docstring."""

    channel = ALERTS_CHANNEL

    def __init__(
        self, pool: asyncpg.Pool, client: Client, settings: Settings, policy: RoutingPolicy
    ) -> None:
        super().__init__(settings.database_url, settings.relay_sweep_seconds)
        self._pool = pool
        self._client = client
        self._settings = settings
        self._policy = policy

    async def drain(self) -> int:
        handed = await self._route_new_alerts()
        handed += await self._start_unstarted_groups()
        handed += await self._tell_cleared_groups()
        return handed

    async def _route_new_alerts(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            alerts = await conn.fetch(
                "SELECT id, kind, severity, summary, details FROM alerts"
                " WHERE group_id IS NULL AND status = 'open' ORDER BY id LIMIT $1"
                " FOR UPDATE SKIP LOCKED",
                BATCH,
            )
            for alert in alerts:
                labels = labels_of(alert["kind"], alert["severity"], alert["details"])
                route = self._policy.route_for(labels)
                group = await conn.fetchrow(
                    _OPEN_GROUP,
                    self._policy.group_key(route, labels),
                    route.name,
                    alert["kind"],
                    alert["severity"],
                    alert["summary"],
                )
                assert group is not None
                await conn.execute(
                    "UPDATE alerts SET group_id = $2 WHERE id = $1", alert["id"], group["id"]
                )
                action = "opened" if group["created"] else "grouped"
                await conn.execute(
                    "INSERT INTO alert_timeline (group_id, action, actor, detail)"
                    " VALUES ($1, $2, 'switchboard', $3)",
                    group["id"],
                    action,
                    f"alert {alert['id']}: {alert['summary']}",
                )
                if group["created"]:
                    await audit(
                        conn,
                        "alert_group",
                        str(group["id"]),
                        None,
                        "open",
                        actor="switchboard",
                        reason=f"route {route.name}",
                    )
        return len(alerts)

    async def _start_unstarted_groups(self) -> int:
        groups = await self._pool.fetch(
            "SELECT id, route FROM alert_groups WHERE workflow_id IS NULL"
            " AND status <> 'resolved' ORDER BY id LIMIT $1",
            BATCH,
        )
        for group in groups:
            route = next(r for r in self._policy.routes if r.name == group["route"])
            workflow_id = escalation_workflow_id(group["id"])
            await self._client.start_workflow(
                EscalationWorkflow.run,
                EscalationInput(
                    group_id=group["id"],
                    route=route.name,
                    group_wait_seconds=route.group_wait.total_seconds(),
                    repeat_interval_seconds=route.repeat_interval.total_seconds(),
                    steps=[
                        EscalationStepPlan(step.after.total_seconds(), list(step.notify))
                        for step in route.escalation
                    ],
                    repage_every_seconds=route.repeat.every.total_seconds()
                    if route.repeat
                    else None,
                    repage_times=route.repeat.times if route.repeat else 0,
                ),
                id=workflow_id,
                task_queue=self._settings.oncall_task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                static_summary=f"alert group {group['id']} ({route.name})",
                request_eager_start=True,
            )
            await self._pool.execute(
                "UPDATE alert_groups SET workflow_id = $2 WHERE id = $1", group["id"], workflow_id
            )
        return len(groups)

    async def _tell_cleared_groups(self) -> int:
        cleared = await self._pool.fetch(
            "SELECT g.id, g.workflow_id FROM alert_groups g WHERE g.status <> 'resolved'"
            " AND g.workflow_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM alerts a"
            " WHERE a.group_id = g.id AND a.status <> 'resolved') LIMIT $1",
            BATCH,
        )
        for group in cleared:
            try:
                await self._client.get_workflow_handle(group["workflow_id"]).signal(
                    EscalationWorkflow.alerts_changed
                )
            except RPCError as error:
                if error.status != RPCStatusCode.NOT_FOUND:
                    raise
        # The workflow resolves the group; until it has, a sweep tells it again (harmless).
        return 0
