"""The delivery lane: one workflow delivers a lane's deliveries one at a time, in seq order.

A lane is one merchant endpoint and one entity (a payment with its refunds, or a merchant's
balance), or a single email. Deliveries of different lanes run in parallel, so a stuck entity
or a dead endpoint holds back only its own lanes. Every attempt is one local activity; between
failed attempts the lane sleeps on durable timers following the retry schedule with jitter
(or longer if the receiver's ``Retry-After`` asks). The relay hands deliveries over with
signal-with-start. A long-lived lane continues as new, carrying its queue and the schedule
position of the delivery it was working on.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
from datetime import timedelta
from enum import Enum

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.deliveries import DeliveryActivities
    from core.contracts import AttemptInput, AttemptResult, DeliveryRef, LaneInput, Verdict
    from workflows.policies import (
        DELIVERIES_PER_LANE_RUN,
        DELIVERY_ATTEMPT_MARGIN,
        DELIVERY_BLOCKED_MAX_WAIT,
        DELIVERY_BLOCKED_WAIT,
        DELIVERY_RECORD_RETRY,
    )

__all__ = ["DeliveryLaneWorkflow"]


class _Next(Enum):
    """What the lane does after working on one delivery."""

    DONE = "done"  # delivered, given up, or handed back: take the next one
    BLOCKED = "blocked"  # an earlier delivery must go first: wait for it
    CONTINUE_AS_NEW = "continue_as_new"  # history is long: carry on in a fresh run


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
        self._enqueue(ref)
        self._arrived = True

    @workflow.run
    async def run(self, lane: LaneInput) -> None:
        for ref in lane.pending:
            self.deliver(ref)
        finished = 0
        blocked_wait = DELIVERY_BLOCKED_WAIT
        while self._queue:
            ref = self._queue.pop(0)
            # Reset before the attempt, so a delivery handed over during it is not missed.
            self._arrived = False
            outcome, ref = await self._deliver(lane, ref)
            if outcome == _Next.CONTINUE_AS_NEW:
                self._enqueue(ref)
                self._continue_as_new(lane)
            if outcome == _Next.BLOCKED:
                self._enqueue(ref)
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda: self._arrived,
                        timeout=blocked_wait,
                        timeout_summary="waiting for an earlier delivery",
                    )
                # Ask less often the longer the earlier delivery takes (it may be held).
                blocked_wait = min(blocked_wait * 2, DELIVERY_BLOCKED_MAX_WAIT)
                if workflow.info().is_continue_as_new_suggested():
                    self._continue_as_new(lane)
                continue
            blocked_wait = DELIVERY_BLOCKED_WAIT
            finished += 1
            if self._queue and (
                finished >= DELIVERIES_PER_LANE_RUN
                or workflow.info().is_continue_as_new_suggested()
            ):
                self._continue_as_new(lane)

    def _enqueue(self, ref: DeliveryRef) -> None:
        bisect.insort(self._queue, ref, key=lambda queued: queued.seq)

    def _continue_as_new(self, lane: LaneInput) -> None:
        workflow.continue_as_new(dataclasses.replace(lane, pending=self._queue))

    async def _deliver(self, lane: LaneInput, ref: DeliveryRef) -> tuple[_Next, DeliveryRef]:
        """Attempt until delivered, given up, handed back, blocked, or the run must renew."""
        schedule = lane.retry_schedule_seconds
        attempt = ref.attempt
        while True:
            result = await self._attempt(lane, ref, final=attempt + 1 >= len(schedule))
            if result.verdict == Verdict.HELD:
                # Paused endpoint: the relay hands it over again once the endpoint resumes.
                self._handed_over.discard((ref.delivery_id, ref.cycle))
                return _Next.DONE, ref
            if result.verdict in (Verdict.DELIVERED, Verdict.FINISHED):
                return _Next.DONE, ref
            if result.verdict == Verdict.BLOCKED:
                return _Next.BLOCKED, dataclasses.replace(ref, attempt=attempt)
            if result.verdict == Verdict.FAILED:
                attempt += 1
                if attempt >= len(schedule):
                    return _Next.DONE, ref  # the last attempt dead-lettered it
                # Retry-After may push the next attempt out, never pull it in.
                delay = max(
                    self._jittered(schedule[attempt], lane.jitter),
                    result.retry_after_seconds or 0.0,
                )
                summary = f"attempt {attempt + 1} of {len(schedule)}"
            else:  # back off: not an attempt (circuit open, endpoint or worker busy)
                delay = self._jittered(result.retry_after_seconds or 1.0, lane.jitter)
                summary = result.detail or "backing off"
            if workflow.info().is_continue_as_new_suggested():
                return _Next.CONTINUE_AS_NEW, dataclasses.replace(ref, attempt=attempt)
            if delay > 0:
                await workflow.sleep(timedelta(seconds=delay), summary=summary)

    async def _attempt(self, lane: LaneInput, ref: DeliveryRef, *, final: bool) -> AttemptResult:
        try:
            return await workflow.execute_local_activity_method(
                DeliveryActivities.attempt_delivery,
                AttemptInput(
                    delivery_id=ref.delivery_id,
                    cycle=ref.cycle,
                    final=final,
                    scheduled_at=workflow.now().isoformat(),
                ),
                start_to_close_timeout=timedelta(seconds=lane.attempt_timeout_seconds)
                + DELIVERY_ATTEMPT_MARGIN,
                retry_policy=DELIVERY_RECORD_RETRY,
            )
        except ActivityError as error:
            # Only a non-retryable error ends up here (the delivery row is gone): skip it
            # rather than fail the lane and strand the deliveries queued behind it.
            workflow.logger.error("delivery %s cannot be attempted: %s", ref.delivery_id, error)
            return AttemptResult(Verdict.FINISHED, detail=str(error.cause or error))

    @staticmethod
    def _jittered(seconds: float, jitter: float) -> float:
        """``seconds`` ± ``jitter`` share, drawn from the workflow's deterministic random."""
        return seconds * (1 + jitter * (2 * workflow.random().random() - 1))
