"""The workflow every accepted webhook runs: apply it in order, wait for dependencies, publish.

Kept to as few Temporal actions as correctness allows: the common path is one workflow task
running two local activities (apply, publish). Only a refund that arrives before its payment
costs more: a durable timer for the dependency window and a signal from the payment's workflow.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.ledger import LedgerActivities
    from activities.publish import PublishActivities
    from core.contracts import (
        ApplyInput,
        ApplyResult,
        Outcome,
        ParkInput,
        PublishInput,
        WebhookInput,
    )
    from workflows.policies import (
        DEPENDENCY_GRACE,
        LEDGER_LOCAL_RETRY_THRESHOLD,
        LEDGER_RETRY,
        LEDGER_TIMEOUT,
        PUBLISH_RETRY,
        PUBLISH_TIMEOUT,
    )

__all__ = ["WebhookWorkflow"]


@workflow.defn
class WebhookWorkflow:
    """One partner webhook, from its recorded row to its published merchant event.

    1. Apply the event in one ledger transaction. Events of one entity take effect in arrival
       order (the activity retries while an earlier one is open).
    2. A refund whose payment is unknown waits, up to the dependency window, for the payment's
       workflow to signal ``dependency_ready``; then it applies, or is parked as a dead letter.
    3. Wake the refunds this event unblocked, then publish the merchant event to Redis.
    """

    def __init__(self) -> None:
        self._dependency_ready = False

    @workflow.signal
    def dependency_ready(self) -> None:
        """The payment this event waits for has taken effect."""
        self._dependency_ready = True

    @workflow.run
    async def run(self, webhook: WebhookInput) -> str:
        try:
            result = await self._apply(ApplyInput(webhook.event_id))
            deadline = workflow.now() + timedelta(seconds=webhook.dependency_window_seconds)
            while result.outcome == Outcome.WAITING:
                result = await self._apply(await self._wait_for_dependency(webhook, deadline))
        except ActivityError as error:
            if not isinstance(error.cause, ApplicationError) or not error.cause.non_retryable:
                raise
            await workflow.execute_local_activity_method(
                LedgerActivities.park_event,
                ParkInput(webhook.event_id, str(error.cause.message)),
                start_to_close_timeout=LEDGER_TIMEOUT,
                retry_policy=LEDGER_RETRY,
            )
            return Outcome.DEAD_LETTERED
        for workflow_id in result.wake_workflow_ids:
            await self._wake(workflow_id)
        if result.publish:
            await workflow.execute_local_activity_method(
                PublishActivities.publish_event,
                PublishInput(webhook.event_id),
                start_to_close_timeout=PUBLISH_TIMEOUT,
                retry_policy=PUBLISH_RETRY,
            )
        workflow.logger.info(
            "webhook %s: %s", webhook.event_id, result.outcome, extra={"event_id": webhook.event_id}
        )
        return result.outcome

    async def _apply(self, request: ApplyInput) -> ApplyResult:
        return await workflow.execute_local_activity_method(
            LedgerActivities.apply_event,
            request,
            start_to_close_timeout=LEDGER_TIMEOUT,
            retry_policy=LEDGER_RETRY,
            local_retry_threshold=LEDGER_LOCAL_RETRY_THRESHOLD,
        )

    async def _wait_for_dependency(self, webhook: WebhookInput, deadline: datetime) -> ApplyInput:
        """Wait for ``dependency_ready`` or the deadline; past the deadline the next apply parks
        (unless the payment has been received and is only queued: then wait a while longer)."""
        remaining = deadline - workflow.now()
        if remaining <= timedelta(0):
            remaining = DEPENDENCY_GRACE
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: self._dependency_ready,
                timeout=remaining,
                timeout_summary="waiting for the payment",
            )
        self._dependency_ready = False
        return ApplyInput(webhook.event_id, park_if_waiting=workflow.now() >= deadline)

    async def _wake(self, workflow_id: str) -> None:
        if workflow_id == workflow.info().workflow_id:
            return
        try:
            await workflow.get_external_workflow_handle(workflow_id).signal(
                WebhookWorkflow.dependency_ready
            )
        except FailureError:
            # The waiting workflow already finished (parked at its deadline): nothing to wake.
            workflow.logger.info("no running workflow %s to wake", workflow_id)
