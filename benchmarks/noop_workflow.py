"""The Temporal baselines' workflow: does nothing, so it costs only what Temporal itself costs.

Kept alone in its module (only ``temporalio`` imported) so the workflow sandbox can load it.
"""

from __future__ import annotations

from temporalio import workflow

__all__ = ["NoopWorkflow"]


@workflow.defn(name="BenchNoop")
class NoopWorkflow:
    """Completes in its first workflow task."""

    @workflow.run
    async def run(self) -> None:
        return None
