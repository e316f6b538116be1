"""The delivery lane: one workflow delivers a lane's deliveries one at a time, in seq order.

A lane is one merchant endpoint and one entity (a payment with its refunds, or a merchant's
balance), or a single email. Deliveries of different lanes run in parallel, so a stuck entity
or a dead endpoint holds back only its own lanes. Every attempt is one local activity; between
failed attempts the lane sleeps on durable timers following the retry schedule with jitter
(or the receiver's ``Retry-After``). The relay hands deliveries over with signal-with-start.
"""

from __future__ import annotations

import bisect
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.deliveries import DeliveryActivities
    from core.contracts import AttemptInput, AttemptResult, DeliveryRef, LaneInput, Verdict
    from workflows.policies import (
        DELIVERIES_PER_LANE_RUN,
        DELIVERY_ATTEMPT_MARGIN,
        DELIVERY_BLOCKED_WAIT,
        DELIVERY_RECORD_RETRY,
    )

__all__ = ["DeliveryLaneWorkflow"]


@workflow.defn(name="DeliveryLane")
class DeliveryLaneWorkflow:
    """Delivers the deliveries signalled to it; see the module docstring."""

    def __init__(self) -> None:
        self._queue: list[DeliveryRef] = []
        self._handed_over: set[tuple[str, int]] = set()
        self._arrived = False

    @workflow.signal
    def deliver(self, ref: DeliveryRef) -> None:
        """Queue one delivery (a repeat of the same delivery and cycle is ignored)."""
        key = (ref.delivery_id, ref.cycle)
        if key in self._handed_over:
            return
        self._handed_over.add(key)
        bisect.insort(self._queue, ref, key=lambda queued: queued.seq)
        self._arrived = True

    @workflow.run
    async def run(self, lane: LaneInput) -> None:
        for ref in lane.pending:
            self.deliver(ref)
        finished = 0
        while self._queue:
            ref = self._queue.pop(0)
            if not await self._deliver(lane, ref):
                # An earlier delivery must go first: wait until it is handed over.
                bisect.insort(self._queue, ref, key=lambda queued: queued.seq)
                self._arrived = False
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda: self._arrived,
                        timeout=DELIVERY_BLOCKED_WAIT,
                        timeout_summary="waiting for an earlier delivery",
                    )
                continue
            finished += 1
            if self._queue and (
                finished >= DELIVERIES_PER_LANE_RUN
                or workflow.info().is_continue_as_new_suggested()
            ):
                workflow.continue_as_new(
                    LaneInput(
                        lane=lane.lane,
                        retry_schedule_seconds=lane.retry_schedule_seconds,
                        jitter=lane.jitter,
                        attempt_timeout_seconds=lane.attempt_timeout_seconds,
                        pending=self._queue,
                    )
                )

    async def _deliver(self, lane: LaneInput, ref: DeliveryRef) -> bool:
        """Attempt until delivered or given up; False if an earlier delivery must go first."""
        schedule = lane.retry_schedule_seconds
        attempt = 0
        while True:
            result = await self._attempt(lane, ref, attempt, final=attempt + 1 >= len(schedule))
            if result.verdict == Verdict.HELD:
                # Paused endpoint: the relay hands it over again once the endpoint resumes.
                self._handed_over.discard((ref.delivery_id, ref.cycle))
                return True
            if result.verdict in (Verdict.DELIVERED, Verdict.FINISHED):
                return True
            if result.verdict == Verdict.BLOCKED:
                return False
            if result.verdict == Verdict.FAILED:
                attempt += 1
                if attempt >= len(schedule):
                    return True  # the last attempt dead-lettered it
                delay = result.retry_after_seconds
                if delay is None:
                    delay = self._jittered(schedule[attempt], lane.jitter)
                summary = f"attempt {attempt + 1} of {len(schedule)}"
            else:  # back off: not an attempt (circuit open, endpoint busy)
                delay = self._jittered(result.retry_after_seconds or 1.0, lane.jitter)
                summary = result.detail or "backing off"
            if delay > 0:
                await workflow.sleep(timedelta(seconds=delay), summary=summary)

    async def _attempt(
        self, lane: LaneInput, ref: DeliveryRef, attempt: int, *, final: bool
    ) -> AttemptResult:
        try:
            return await self._attempt_once(lane, ref, attempt, final=final)
        except ActivityError as error:
            # Only a non-retryable error ends up here (the delivery row is gone): skip it
            # rather than fail the lane and strand the deliveries queued behind it.
            workflow.logger.error("delivery %s cannot be attempted: %s", ref.delivery_id, error)
            return AttemptResult(Verdict.FINISHED, detail=str(error.cause or error))

    async def _attempt_once(
        self, lane: LaneInput, ref: DeliveryRef, attempt: int, *, final: bool
    ) -> AttemptResult:
        return await workflow.execute_local_activity_method(
            DeliveryActivities.attempt_delivery,
            AttemptInput(
                delivery_id=ref.delivery_id,
                cycle=ref.cycle,
                attempt=attempt,
                final=final,
                scheduled_at=workflow.now().isoformat(),
            ),
            start_to_close_timeout=timedelta(seconds=lane.attempt_timeout_seconds)
            + DELIVERY_ATTEMPT_MARGIN,
            retry_policy=DELIVERY_RECORD_RETRY,
        )

    @staticmethod
    def _jittered(seconds: float, jitter: float) -> float:
        """``seconds`` ± ``jitter`` share, drawn from the workflow's deterministic random."""
        return seconds * (1 + jitter * (2 * workflow.random().random() - 1))
