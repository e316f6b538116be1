"""The workflow each exchange request runs: its SLA timers, its customer's emails, its analytics.

Transitions never happen here: operators make them in the api, each one Postgres transaction
(:mod:`core.exchange`), and the api then signals ``changed`` so the workflow re-arms its timers.
Timers act through activities that re-check the request in Postgres with a conditional write
(:mod:`activities.exchange`), so a timer racing a human is safe whichever commits first, and a
lost signal only means the next timer finds the news itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import Priority as TemporalPriority

with workflow.unsafe.imports_passed_through():
    from activities.exchange import ExchangeActivities
    from core.contracts import (
        EXCHANGE_TRANSITIONS,
        ExchangeNoticeInput,
        ExchangeState,
        ExchangeStatus,
        ExchangeTimerInput,
        ExchangeTimerResult,
        ExchangeWorkflowInput,
        Priority,
    )
    from workflows.policies import EXCHANGE_RESYNC, EXCHANGE_STEP_RETRY, EXCHANGE_STEP_TIMEOUT

__all__ = ["ExchangeRequestWorkflow"]

STEP: dict[str, Any] = {
    "start_to_close_timeout": EXCHANGE_STEP_TIMEOUT,
    "retry_policy": EXCHANGE_STEP_RETRY,
}


@workflow.defn
class ExchangeRequestWorkflow:
    """One exchange request, from its creation until it ends (id ``exchange-request:{id}``).

    1. Read the request; tell the customer it was received.
    2. While it is open, wait for the api's news or the timer of its state:
       * ``pending`` past ``pending_sla_seconds`` raises the ``exchange_pending_sla`` alert
         (resolved once it is claimed or ends);
       * ``assigned`` past ``assigned_timeout_seconds`` without a transition goes back to
         ``pending``, audited as ``system:sla`` with the assignee named in the reason;
       * otherwise re-read it every :data:`~workflows.policies.EXCHANGE_RESYNC`.
    3. On each new state, email the customer at its milestones (standard priority) and record
       an analytics event (lowest priority), neither holding the next timer back.
    """

    @workflow.init
    def __init__(self, request: ExchangeWorkflowInput) -> None:
        self._news: ExchangeState | None = None
        self._side_work: list[asyncio.Task[Any]] = []

    @workflow.signal
    def changed(self, state: ExchangeState) -> None:
        """A transition committed (the api tells; repeats and late arrivals are ignored)."""
        if self._news is None or state.version > self._news.version:
            self._news = state

    @workflow.run
    async def run(self, request: ExchangeWorkflowInput) -> str:
        state = await self._step(ExchangeActivities.look_up, request.request_id)
        entered = self._entered(state)
        self._observed(request, state)
        alerted = False
        while state.status not in EXCHANGE_TRANSITIONS.final:
            if workflow.info().is_continue_as_new_suggested():
                await self._drain_side_work()
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(request)
            seen = await self._wait_for_news(state, self._due(request, state, entered, alerted))
            if seen is None:
                seen, acted = await self._fire(request, state, alerted)
                alerted = alerted or (acted and state.status == ExchangeStatus.PENDING)
            if seen.version <= state.version:
                continue
            state, entered = seen, self._entered(seen)
            if alerted and state.status != ExchangeStatus.PENDING:
                state = await self._newest(
                    state,
                    await self._step(ExchangeActivities.resolve_pending_sla, request.request_id),
                )
                alerted = state.status == ExchangeStatus.PENDING
            self._observed(request, state)
        await self._drain_side_work()
        return f"{state.status} at version {state.version}"

    def _due(
        self, request: ExchangeWorkflowInput, state: ExchangeState, entered: datetime, alerted: bool
    ) -> datetime:
        if state.status == ExchangeStatus.PENDING and not alerted:
            return entered + timedelta(seconds=request.pending_sla_seconds)
        if state.status == ExchangeStatus.ASSIGNED:
            return entered + timedelta(seconds=request.assigned_timeout_seconds)
        return workflow.now() + EXCHANGE_RESYNC

    async def _fire(
        self, request: ExchangeWorkflowInput, state: ExchangeState, alerted: bool
    ) -> tuple[ExchangeState, bool]:
        """The due timer's activity: what it found, and whether it acted."""
        result: ExchangeTimerResult
        if state.status == ExchangeStatus.PENDING and not alerted:
            timer = ExchangeTimerInput(
                request.request_id, state.version, request.pending_sla_seconds
            )
            result = await self._step(ExchangeActivities.check_pending_sla, timer)
        elif state.status == ExchangeStatus.ASSIGNED:
            timer = ExchangeTimerInput(
                request.request_id, state.version, request.assigned_timeout_seconds
            )
            result = await self._step(ExchangeActivities.release_idle, timer)
        else:
            found = await self._step(ExchangeActivities.look_up, request.request_id)
            return found, False
        return await self._newest(state, result.state), result.acted

    async def _wait_for_news(self, state: ExchangeState, due: datetime) -> ExchangeState | None:
        """Newer news than ``state`` from the api, or None once ``due`` passes without any."""
        remaining = due - workflow.now()
        if remaining > timedelta(0):
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._news is not None and self._news.version > state.version,
                    timeout=remaining,
                    timeout_summary=f"{state.status} timer",
                )
        if self._news is not None and self._news.version > state.version:
            return self._news
        return None

    async def _newest(self, state: ExchangeState, found: ExchangeState) -> ExchangeState:
        """Of what an activity found and what the api told meanwhile, the later state."""
        news = self._news
        if news is not None and news.version > found.version:
            return news
        return found if found.version >= state.version else state

    def _entered(self, state: ExchangeState) -> datetime:
        return workflow.now() - timedelta(seconds=state.age_seconds)

    def _observed(self, request: ExchangeWorkflowInput, state: ExchangeState) -> None:
        """Email the customer and record analytics for ``state``, without waiting for either."""
        notice = ExchangeNoticeInput(request.request_id, state)
        self._side_work = [task for task in self._side_work if not task.done()]
        self._side_work.append(
            workflow.start_activity_method(
                ExchangeActivities.notify_customer,
                notice,
                priority=TemporalPriority(priority_key=Priority.STANDARD),
                summary=f"tell the customer: {state.status}",
                **STEP,
            )
        )
        self._side_work.append(
            workflow.start_activity_method(
                ExchangeActivities.record_analytics,
                notice,
                priority=TemporalPriority(priority_key=Priority.OTHER),
                summary=f"analytics: {state.status} v{state.version}",
                **STEP,
            )
        )

    async def _drain_side_work(self) -> None:
        pending, self._side_work = self._side_work, []
        await asyncio.gather(*pending)

    async def _step(self, method: Any, argument: Any) -> Any:
        return await workflow.execute_activity_method(method, argument, **STEP)
