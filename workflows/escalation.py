"""One alert group's escalation, on durable timers: notify, wait for an ack, escalate, re-page,
and resolve (by an operator, or when every alert of the group cleared).

The group opens with its first alert (``relays/alerts.py`` starts this workflow). After
``group_wait`` the first escalation step notifies its channels; each later step fires once its
``after`` (counted from the opening) passes without an acknowledgement; then the last step's
channels are re-paged every ``repage_every`` up to ``repage_times``. New occurrences never
notify again: every ``repeat_interval`` a summary of them goes into the Slack thread. A silence
or an inhibiting alert holds a trigger back until it ends.

Acknowledge and resolve are updates whose validators answer at once ("already resolved" is
refused before it reaches history); the condition clearing is a signal.

A flapping group signals for every change, and each wakes a summary: some ten events of history
apiece. Past :data:`HISTORY_BOUND` events (or when the server suggests it) a run continues as new,
carrying where it stood (:class:`~core.contracts.EscalationState`), so no run nears the server's
10,240-event warning or its 51,200-event limit, which would end the group's escalation.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from core.contracts import (
        ALREADY_DONE,
        NOTIFY_ACTIVITY,
        EscalationInput,
        EscalationState,
        NotifyAction,
        NotifyInput,
        NotifyResult,
    )
    from workflows.policies import NOTIFY_RETRY, NOTIFY_TIMEOUT

__all__ = ["EscalationWorkflow"]

# A held trigger is looked at again no sooner than this, whatever the clocks say.
HELD_RECHECK_FLOOR = timedelta(seconds=10)

HISTORY_BOUND = 1_000
"""Events after which a run continues as new, well before the server suggests it (4,096)."""
CONTINUE_AS_NEW_PATCH = "escalation-continue-as-new"
"""A run already past the bound under the code that never continued as new keeps that path
(``tests/histories/README.md``)."""


@workflow.defn
class EscalationWorkflow:
    """See the module docstring; one run per alert group, id ``alert-group:{id}``."""

    @workflow.init
    def __init__(self, plan: EscalationInput) -> None:
        carried = plan.carried
        self._group_id = plan.group_id
        self._acknowledged_by = carried.acknowledged_by if carried else None
        self._resolved_by: str | None = None
        self._resolve_reason: str | None = None
        self._cleared = carried.cleared if carried else False
        self._acknowledgement_pending = carried.acknowledgement_pending if carried else False
        self._changes_seen = carried.changes_seen if carried else 0

    @workflow.update
    async def acknowledge(self, actor: str) -> str:
        """Stop escalating; the group stays open until it is resolved. Answers once the new
        state is recorded; the channels are told right after."""
        self._acknowledged_by = actor
        await self._record(NotifyAction.ACKNOWLEDGE)
        self._acknowledgement_pending = True
        return "acknowledged"

    @acknowledge.validator
    def _acknowledgeable(self, actor: str) -> None:
        if not actor:
            raise ValueError("an acknowledgement needs an actor")
        if self._resolved_by is not None:
            raise ApplicationError(f"already resolved by {self._resolved_by}", type=ALREADY_DONE)
        if self._acknowledged_by is not None:
            raise ApplicationError(
                f"already acknowledged by {self._acknowledged_by}", type=ALREADY_DONE
            )

    @workflow.update
    async def resolve(self, actor: str, reason: str) -> str:
        """Resolve the group and every alert in it; answers once that is recorded."""
        self._resolved_by = actor
        self._resolve_reason = reason
        await self._record(NotifyAction.RESOLVE)
        return "resolved"

    @resolve.validator
    def _resolvable(self, actor: str, reason: str) -> None:
        if not actor:
            raise ValueError("a resolution needs an actor")
        if self._resolved_by is not None:
            raise ApplicationError(f"already resolved by {self._resolved_by}", type=ALREADY_DONE)

    @workflow.signal
    def alerts_changed(self) -> None:
        """An alert of the group was resolved where it was detected: check whether all were."""
        self._cleared = True
        self._changes_seen += 1

    @workflow.query
    def changes_seen(self) -> int:
        """``alerts_changed`` signals received so far, by this run and the runs before it."""
        return self._changes_seen

    @workflow.run
    async def run(self, plan: EscalationInput) -> str:
        carried = plan.carried
        if carried is None:
            opened = workflow.now()
            notified: list[str] = []
            pages = 0
            step = 0
            next_summary = opened + timedelta(seconds=plan.repeat_interval_seconds)
            # The group collects its first alerts before anyone is told.
            due: datetime | None = opened + timedelta(seconds=plan.group_wait_seconds)
        else:
            opened = datetime.fromisoformat(carried.opened)
            notified, pages, step = list(carried.notified), carried.pages, carried.step
            next_summary = datetime.fromisoformat(carried.next_summary)
            due = None if carried.due is None else datetime.fromisoformat(carried.due)
        while self._resolved_by is None:
            if self._history_is_long() and workflow.patched(CONTINUE_AS_NEW_PATCH):
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self._resolved_by is not None:
                    break
                workflow.continue_as_new(
                    dataclasses.replace(
                        plan,
                        carried=EscalationState(
                            opened=opened.isoformat(),
                            notified=notified,
                            pages=pages,
                            step=step,
                            next_summary=next_summary.isoformat(),
                            due=None if due is None else due.isoformat(),
                            acknowledged_by=self._acknowledged_by,
                            acknowledgement_pending=self._acknowledgement_pending,
                            cleared=self._cleared,
                            changes_seen=self._changes_seen,
                        ),
                    )
                )
            await self._wait_until(min(d for d in (due, next_summary) if d is not None))
            if self._resolved_by is not None:
                break
            if self._cleared:
                self._cleared = False
                if (await self._notify(plan, NotifyAction.SUMMARY, notified)).open_alerts == 0:
                    self._resolved_by, self._resolve_reason = "switchboard", "condition cleared"
                    break
            if self._acknowledgement_pending:
                self._acknowledgement_pending = False
                await self._notify(plan, NotifyAction.ACKNOWLEDGE, notified)
                due = None  # no more escalation; wait for the resolution
                continue
            now = workflow.now()
            if due is not None and now >= due and self._acknowledged_by is None:
                channels = self._channels_for(plan, step)
                result = await self._notify(plan, NotifyAction.TRIGGER, channels, step=step)
                if result.held_until is not None:
                    due = max(datetime.fromisoformat(result.held_until), now + HELD_RECHECK_FLOOR)
                    continue
                notified = sorted(set(notified) | set(channels))
                pages += "pagerduty" in channels
                step += 1
                due = self._due(plan, opened, step)
            if now >= next_summary:
                await self._notify(plan, NotifyAction.SUMMARY, notified)
                next_summary = now + timedelta(seconds=plan.repeat_interval_seconds)
        await self._notify(plan, NotifyAction.RESOLVE, notified)
        return f"resolved by {self._resolved_by} after {step} step(s), {pages} page(s)"

    @staticmethod
    def _history_is_long() -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested() or info.get_current_history_length() > HISTORY_BOUND
        )

    @staticmethod
    def _channels_for(plan: EscalationInput, step: int) -> list[str]:
        """The channels of step ``step``; past the steps, re-pages go to the last step's."""
        return plan.steps[min(step, len(plan.steps) - 1)].channels

    @staticmethod
    def _due(plan: EscalationInput, opened: datetime, step: int) -> datetime | None:
        """When step ``step`` fires (counting re-pages after the steps), or None if never."""
        if step < len(plan.steps):
            after = max(plan.steps[step].after_seconds, plan.group_wait_seconds)
            return opened + timedelta(seconds=after)
        repage = step - len(plan.steps) + 1
        if plan.repage_every_seconds is None or repage > plan.repage_times:
            return None
        last = max(plan.steps[-1].after_seconds, plan.group_wait_seconds)
        return opened + timedelta(seconds=last + repage * plan.repage_every_seconds)

    async def _wait_until(self, deadline: datetime) -> None:
        """Wait for the deadline, or until something happens: an ack, a resolution, a clear."""
        remaining = deadline - workflow.now()
        if remaining <= timedelta(0):
            return
        try:
            await workflow.wait_condition(
                lambda: (
                    self._resolved_by is not None or self._cleared or self._acknowledgement_pending
                ),
                timeout=remaining,
                timeout_summary="next escalation step or summary",
            )
        except TimeoutError:
            return

    async def _record(self, action: NotifyAction) -> None:
        """Record an acknowledgement or resolution (no channel is told yet)."""
        await self._call(self._group_id, action, [])

    async def _notify(
        self, plan: EscalationInput, action: NotifyAction, channels: list[str], *, step: int = 0
    ) -> NotifyResult:
        return await self._call(plan.group_id, action, channels, step=step)

    async def _call(
        self, group_id: str, action: NotifyAction, channels: list[str], *, step: int = 0
    ) -> NotifyResult:
        actor = self._acknowledged_by if action == NotifyAction.ACKNOWLEDGE else self._resolved_by
        result: NotifyResult = await workflow.execute_activity(
            NOTIFY_ACTIVITY,
            NotifyInput(
                group_id=group_id,
                action=action,
                channels=channels,
                at=workflow.now().isoformat(),
                step=step,
                actor=actor,
                reason=self._resolve_reason,
            ),
            result_type=NotifyResult,
            start_to_close_timeout=NOTIFY_TIMEOUT,
            retry_policy=NOTIFY_RETRY,
            summary=f"{action} {', '.join(channels) or 'timeline'}",
        )
        return result
