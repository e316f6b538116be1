"""The escrow saga's shape in Temporal, with steps that do nothing: what Temporal alone costs an
escrow, to put the escrow benchmark's completion rate in proportion.

It makes the same calls on the server as :class:`workflows.escrow.EscrowWorkflow` releasing to an
external account: started without eager start (the api is not a worker), one workflow task that
runs the funding steps as local activities (publish ``created``, move to ``funding``, two debits
at once, move to ``funded``) and starts the expiry timer, then a release update whose task runs
the ``releasing`` step, hands the payout to a regular activity, and ends with the settlement step.
Every step returns at once; nothing touches Postgres, Redis or HTTP.

Kept alone in its module (only ``temporalio`` imported) so the workflow sandbox can load it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

__all__ = ["FUNDED_STEP", "STEP", "SagaShapeWorkflow"]

STEP = "saga_shape_step"
"""An activity that returns its argument (every step but the last funding one)."""
FUNDED_STEP = "saga_shape_funded"
"""The last funding step: tells the starter the saga is funded (the api's wait, in-process)."""
_TIMEOUT = timedelta(seconds=30)
_EXPIRY = timedelta(days=1)


@workflow.defn(name="BenchSagaShape")
class SagaShapeWorkflow:
    """See the module docstring."""

    def __init__(self) -> None:
        self._ordered = False
        self._released = False

    @workflow.run
    async def run(self) -> str:
        await self._local("publish created")
        await self._local("move to funding")
        await asyncio.gather(self._local("debit source 1"), self._local("debit source 2"))
        await workflow.execute_local_activity(
            FUNDED_STEP, workflow.info().workflow_id, start_to_close_timeout=_TIMEOUT
        )
        try:
            await workflow.wait_condition(lambda: self._ordered, timeout=_EXPIRY)
        except TimeoutError:
            return "expired"
        await self._local("move to releasing")
        await workflow.execute_activity(STEP, "payout transfer", start_to_close_timeout=_TIMEOUT)
        await self._local("release")
        self._released = True
        await workflow.wait_condition(workflow.all_handlers_finished)
        return "released"

    @workflow.update
    async def release(self) -> str:
        self._ordered = True
        await workflow.wait_condition(lambda: self._released)
        return "released"

    async def _local(self, step: str) -> None:
        await workflow.execute_local_activity(STEP, step, start_to_close_timeout=_TIMEOUT)
