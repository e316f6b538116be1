"""The health monitor: one short run per tick of a Temporal Schedule, running the checks of
:mod:`activities.monitor` (inbox age, task-queue backlogs and pollers, decline rates).

The Schedule (``health-monitor:{oncall task queue}``, every ``monitor_interval_seconds``, a tick
skipped while the previous run is still going) is kept by the worker at start
(``worker.ensure_monitor_schedule``), so the monitor survives any process dying and shows in the
Web UI's Schedules.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from core.contracts import HEALTH_CHECK_ACTIVITY, HealthReport

__all__ = ["HealthMonitorWorkflow"]

# The next tick runs the checks again anyway: a few quick retries, then give up this tick.
CHECK_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
CHECK_TIMEOUT = timedelta(seconds=20)


@workflow.defn
class HealthMonitorWorkflow:
    """Run the health checks once."""

    @workflow.run
    async def run(self) -> HealthReport:
        report: HealthReport = await workflow.execute_activity(
            HEALTH_CHECK_ACTIVITY,
            result_type=HealthReport,
            start_to_close_timeout=CHECK_TIMEOUT,
            retry_policy=CHECK_RETRY,
        )
        return report
