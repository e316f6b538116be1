"""The health monitor's checks: what on-call must hear about although no single event shows it.

Run by :class:`workflows.monitor.HealthMonitorWorkflow` on a Temporal Schedule (every
``monitor_interval_seconds``), never by a loop in some process. Each check raises its alert while
the condition holds and resolves it when it clears (the escalation then resolves itself):

* ``inbox_backlog``: the oldest webhook still waiting in the inbox is older than
  ``inbox_age_alert_seconds``.
* ``task_queue_backlog``: a Temporal task queue's oldest task (its statistics API) is older than
  ``backlog_age_alert_seconds``, or tasks arrive faster than they are dispatched while a backlog
  is waiting.
* ``no_pollers``: nobody polls a task queue Switchboard needs (a worker is down).
* ``payment_decline_rate``: one partner's payment failures for one merchant, in the last
  ``decline_window_seconds``, far above that merchant's rate over the previous day (a provider
  outage looks like this), instead of an alert per decline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
from temporalio import activity
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from core.alerting import AlertKind, Severity, alert_kind
from core.audit import raise_alert, resolve_alert
from core.contracts import HEALTH_CHECK_ACTIVITY, HealthReport
from core.db import Connection
from core.settings import Settings

__all__ = ["HealthActivities"]

INBOX_BACKLOG = alert_kind(
    "inbox_backlog",
    Severity.ERROR,
    "Webhooks are waiting in the inbox too long: the relay or Temporal is behind or down.",
)
TASK_QUEUE_BACKLOG = alert_kind(
    "task_queue_backlog",
    Severity.ERROR,
    "Tasks wait on a Temporal task queue too long, or arrive faster than they drain.",
)
NO_POLLERS = alert_kind(
    "no_pollers",
    Severity.CRITICAL,
    "No worker polls a task queue Switchboard needs: its work is not being done.",
)
DECLINE_RATE = alert_kind(
    "payment_decline_rate",
    Severity.ERROR,
    "A partner reports far more payment failures for a merchant than usual (an outage?).",
)


@dataclass(frozen=True)
class Finding:
    """A condition that holds now: the alert to raise (or keep open) for it."""

    kind: AlertKind
    summary: str
    details: dict[str, Any]


Findings = dict[str, Finding]
"""Findings by dedup key."""

# A backlog this small is noise, however the rates compare.
MIN_GROWING_BACKLOG = 100

_DECLINES = """
WITH recent AS (
    SELECT partner_id, merchant_id,
           count(*) FILTER (WHERE status = 'failed') AS failed, count(*) AS total
    FROM payments WHERE created_at >= now() - make_interval(secs => $1)
    GROUP BY partner_id, merchant_id
), before AS (
    SELECT partner_id, merchant_id,
           count(*) FILTER (WHERE status = 'failed') AS failed, count(*) AS total
    FROM payments
    WHERE created_at >= now() - make_interval(secs => $1) - interval '1 day'
      AND created_at < now() - make_interval(secs => $1)
    GROUP BY partner_id, merchant_id
)
SELECT r.partner_id, r.merchant_id, r.failed, r.total,
       coalesce(b.failed::float8 / nullif(b.total, 0), 0) AS usual_rate
FROM recent r LEFT JOIN before b USING (partner_id, merchant_id)
WHERE r.failed >= $2
"""


class HealthActivities:
    """The monitor's checks, with the Postgres pool and Temporal client injected."""

    def __init__(self, pool: asyncpg.Pool, client: Client, settings: Settings) -> None:
        self._pool = pool
        self._client = client
        self._settings = settings

    @activity.defn(name=HEALTH_CHECK_ACTIVITY)
    async def check(self) -> HealthReport:
        """Run every check once; raise what holds, resolve what cleared."""
        findings: Findings = {}
        async with self._pool.acquire() as conn:
            await self._inbox(conn, findings)
            await self._declines(conn, findings)
        for queue in (
            self._settings.task_queue,
            self._settings.delivery_task_queue,
            self._settings.oncall_task_queue,
        ):
            await self._task_queue(queue, findings)
        async with self._pool.acquire() as conn, conn.transaction():
            for key, finding in findings.items():
                await raise_alert(
                    conn,
                    finding.kind,
                    dedup_key=key,
                    summary=finding.summary,
                    details=finding.details,
                )
            monitored = await conn.fetch(
                "SELECT dedup_key FROM alerts WHERE status <> 'resolved' AND kind = ANY($1)",
                [INBOX_BACKLOG.name, TASK_QUEUE_BACKLOG.name, NO_POLLERS.name, DECLINE_RATE.name],
            )
            for row in monitored:
                if row["dedup_key"] not in findings:
                    await resolve_alert(conn, row["dedup_key"], reason="the condition cleared")
        return HealthReport(sorted(findings))

    async def _inbox(self, conn: Connection, findings: Findings) -> None:
        row = await conn.fetchrow(
            "SELECT count(*) AS waiting, extract(epoch FROM now() - min(recorded_at)) AS age"
            " FROM webhooks WHERE status = 'received'"
        )
        assert row is not None
        age = float(row["age"] or 0)
        if age > self._settings.inbox_age_alert_seconds:
            findings["inbox_backlog"] = Finding(
                INBOX_BACKLOG,
                f"{row['waiting']} webhook(s) waiting in the inbox, the oldest for {age:.0f} s",
                {"waiting": str(row["waiting"]), "age_seconds": str(round(age))},
            )

    async def _declines(self, conn: Connection, findings: Findings) -> None:
        for row in await conn.fetch(
            _DECLINES, self._settings.decline_window_seconds, self._settings.decline_min_failures
        ):
            rate = row["failed"] / row["total"]
            threshold = max(self._settings.decline_rate_factor * row["usual_rate"], 0.5)
            if rate <= threshold:
                continue
            partner, merchant = row["partner_id"], row["merchant_id"]
            findings[f"payment_decline_rate:{partner}:{merchant}"] = Finding(
                DECLINE_RATE,
                f"{row['failed']} of {row['total']} payments for {merchant} from {partner} failed"
                f" in the last {self._settings.decline_window_seconds / 60:g} min ({rate:.0%};"
                f" usually {row['usual_rate']:.0%})",
                {"partner_id": partner, "merchant_id": merchant},
            )

    async def _task_queue(self, queue: str, findings: Findings) -> None:
        for task_type, label in (
            (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, "workflow"),
            (TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY, "activity"),
        ):
            described = await self._client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=self._client.namespace,
                    task_queue=TaskQueue(name=queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
                    task_queue_type=task_type,
                    report_stats=True,
                )
            )
            stats = described.stats
            age = stats.approximate_backlog_age.ToTimedelta()
            backlog = stats.approximate_backlog_count
            growing = (
                backlog >= MIN_GROWING_BACKLOG and stats.tasks_add_rate > stats.tasks_dispatch_rate
            )
            if age > timedelta(seconds=self._settings.backlog_age_alert_seconds) or growing:
                findings[f"task_queue_backlog:{queue}:{label}"] = Finding(
                    TASK_QUEUE_BACKLOG,
                    f"{backlog} {label} task(s) waiting on {queue}, the oldest for"
                    f" {age.total_seconds():.0f} s (in {stats.tasks_add_rate:.1f}/s,"
                    f" out {stats.tasks_dispatch_rate:.1f}/s)",
                    {"task_queue": queue, "task_type": label},
                )
            if label == "workflow" and not described.pollers:
                findings[f"no_pollers:{queue}"] = Finding(
                    NO_POLLERS,
                    f"no worker polls the task queue {queue}",
                    {"task_queue": queue},
                )
