"""One escrow's saga: fund it from its sources, hold it, then release it to its beneficiary or
refund it, with every step durable and every financial operation keyed by business identity.

The rules (DESIGN.md §2), as the workflow runs them:

* **Funding is a saga.** Every source is debited into the escrow's holding account by its own
  activity, keyed ``escrow:{id}:debit:{wallet}``. If any debit fails for good (insufficient
  funds, a closed wallet), every debit already made is returned, all of them even if one return
  fails for a while: each is retried until done, and an alert opens if that takes longer than
  ``compensation_alert_seconds``. The escrow then ends ``failed`` with every debit returned.
* **Release and refund are updates** whose validators refuse at once an escrow that can no
  longer be released or refunded (failed, released, refunded, or another order under way). One
  that comes while funding is still being recorded here (Postgres, which the api checks first,
  may already say ``funded``) waits for funding to end and is refused then if it failed. An
  escrow nobody released by ``expires_at`` is refunded on a durable timer.
* **Settlement calls the provider before the database.** A release to an external account
  first asks the payout provider to transfer, with an idempotency key from the escrow (retried
  with the same key); only a confirmed transfer is written (holding account out to the world,
  ``released``). A refusal for good leaves the database untouched and holds the escrow in
  ``release_failed`` with an alert, until an operator retries the release or refunds it.
* **Every transition is audited and published** to the merchant's live feed, in order: the step
  that commits a transition publishes its event once committed (at least once; the event
  carries the merchant ``seq``).

The workflow itself only decides; every read and write is an activity. The Postgres steps run as
local activities, so one workflow task runs several of them (funding is one task) without a
round trip through the server each; a step still failing after ``ESCROW_LOCAL_BUDGET`` (Postgres
away) goes on as a regular activity, retried by the server until done. The provider's transfer
is a regular activity, so the workflow task that accepts a release never waits for the provider.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError as StepTimeout
from temporalio.types import MethodAsyncSingleParam

with workflow.unsafe.imports_passed_through():
    from activities.escrow import COMPENSATION_SLOW, RELEASE_REFUSED, EscrowActivities
    from activities.publish import PublishActivities
    from core.contracts import (
        ESCROW_REFUSED,
        ESCROW_TRANSITIONS,
        PAYOUT_TRANSFER_ACTIVITY,
        EscrowAlertInput,
        EscrowInput,
        EscrowMoveInput,
        EscrowRequest,
        EscrowSettleInput,
        EscrowSource,
        EscrowSourceInput,
        EscrowStatus,
        PayoutTransferInput,
        PayoutTransferResult,
        PublishInput,
    )
    from workflows.policies import (
        ESCROW_LOCAL_BUDGET,
        ESCROW_STEP_RETRY,
        ESCROW_STEP_TIMEOUT,
        PAYOUT_RETRY,
        PAYOUT_TIMEOUT,
        PUBLISH_RETRY,
        PUBLISH_TIMEOUT,
    )

__all__ = ["EscrowWorkflow"]

SYSTEM = "switchboard"
"""The actor of the saga's own steps (expiry, compensation)."""
_FUNDING = (EscrowStatus.CREATED, EscrowStatus.FUNDING)
STEP_FAILED = (ActivityError, ApplicationError)
"""How a step fails for good: a regular activity raises ActivityError, a local one (see
:func:`_cause`) the activity's own ApplicationError."""

A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True)
class _Order:
    """A release or refund waiting to run, and its place in line."""

    action: Literal["release", "refund"]
    request: EscrowRequest
    ticket: int


@workflow.defn
class EscrowWorkflow:
    """See the module docstring; one run per escrow, id ``escrow:{escrow_id}``."""

    @workflow.init
    def __init__(self, escrow: EscrowInput) -> None:
        self._escrow = escrow
        self._status = EscrowStatus.CREATED
        self._version = escrow.version
        self._order: _Order | None = None
        self._orders = 0
        self._done = 0
        self._releases = 0

    @workflow.run
    async def run(self, escrow: EscrowInput) -> str:
        await self._publish(escrow.created_event_id)
        await self._move(EscrowStatus.FUNDING, escrow.actor, f"{len(escrow.sources)} source(s)")
        debited, refusal = await self._debit_every_source()
        if refusal is not None:
            await self._return_debits(debited)
            await self._move(EscrowStatus.FAILED, SYSTEM, refusal)
            return await self._finish()
        await self._move(EscrowStatus.FUNDED, SYSTEM, None)
        while self._status not in ESCROW_TRANSITIONS.final:
            order = await self._next_order()
            if order.action == "release":
                await self._release(order.request)
            else:
                await self._refund(order.request)
            self._order = None
            self._done = order.ticket
        return await self._finish()

    @workflow.query
    def status(self) -> str:
        """Where the saga is (Postgres holds the same, with its history)."""
        return self._status

    @workflow.update
    async def release(self, request: EscrowRequest) -> str:
        """Release the escrow to its beneficiary; answers with where that left it
        (``released``, or ``release_failed`` if the release was refused for good)."""
        return await self._run_order("release", request)

    @release.validator
    def _validate_release(self, request: EscrowRequest) -> None:
        self._refuse_unless_held("released", funding=True)

    @workflow.update
    async def refund(self, request: EscrowRequest) -> str:
        """Return the escrow to its sources; answers ``refunded``."""
        return await self._run_order("refund", request)

    @refund.validator
    def _validate_refund(self, request: EscrowRequest) -> None:
        self._refuse_unless_held("refunded", funding=True)

    # -- funding -------------------------------------------------------------------------------

    async def _debit_every_source(self) -> tuple[list[EscrowSource], str | None]:
        """Debit every source at once; the debits made, and why one failed for good (if any)."""
        sources = self._escrow.sources
        outcomes = await asyncio.gather(
            *(self._step(EscrowActivities.debit_escrow_source, self._leg(s)) for s in sources),
            return_exceptions=True,
        )
        debited = [
            s
            for s, out in zip(sources, outcomes, strict=True)
            if not isinstance(out, BaseException)
        ]
        refusals = [_reason(out) for out in outcomes if isinstance(out, BaseException)]
        return debited, "; ".join(refusals) if refusals else None

    async def _return_debits(self, debited: list[EscrowSource]) -> None:
        """Return every debit made, each retried until done; alert if it takes too long."""
        returns = [
            asyncio.ensure_future(
                self._step(EscrowActivities.return_escrow_source, self._leg(source))
            )
            for source in debited
        ]
        slow_after = timedelta(seconds=self._escrow.compensation_alert_seconds)
        try:
            await workflow.wait_condition(
                lambda: all(r.done() for r in returns), timeout=slow_after
            )
        except TimeoutError:
            await self._alert(COMPENSATION_SLOW.name, "returning the funding debits is slow")
            await asyncio.gather(*returns)
            await self._alert(COMPENSATION_SLOW.name, "every debit returned", resolve=True)
        else:
            await asyncio.gather(*returns)

    # -- holding, release and refund ---------------------------------------------------------

    async def _next_order(self) -> _Order:
        """The next release or refund; while ``funded``, a refund of the saga's own once the
        escrow expires (an escrow held in ``release_failed`` waits for an operator)."""
        if self._status == EscrowStatus.FUNDED:
            left = datetime.fromisoformat(self._escrow.expires_at) - workflow.now()
            try:
                if left <= timedelta(0):
                    raise TimeoutError
                await workflow.wait_condition(lambda: self._order is not None, timeout=left)
            except TimeoutError:
                if self._order is None:
                    self._orders += 1
                    self._order = _Order("refund", EscrowRequest(SYSTEM, "expired"), self._orders)
        await workflow.wait_condition(lambda: self._order is not None)
        assert self._order is not None
        return self._order

    async def _release(self, request: EscrowRequest) -> None:
        """Transfer first (external account), then the database; a refusal holds the escrow."""
        self._releases += 1
        await self._move(EscrowStatus.RELEASING, request.actor, request.reason)
        transfer_id: str | None = None
        try:
            if self._escrow.beneficiary_account is not None:
                # A regular activity: the workflow task that accepts the release must end
                # without waiting for the provider (the api waits for the acceptance).
                transfer = await workflow.execute_activity(
                    PAYOUT_TRANSFER_ACTIVITY,
                    PayoutTransferInput(
                        idempotency_key=self._payout_key(),
                        account=self._escrow.beneficiary_account,
                        amount=self._escrow.amount,
                        currency=self._escrow.currency,
                        reference=self._escrow.reference,
                    ),
                    result_type=PayoutTransferResult,
                    start_to_close_timeout=PAYOUT_TIMEOUT,
                    retry_policy=PAYOUT_RETRY,
                )
                transfer_id = transfer.transfer_id
            settle = EscrowSettleInput(
                self._escrow.escrow_id, self._version, request.actor, request.reason, transfer_id
            )
            await self._step(EscrowActivities.release_escrow, settle)
        except STEP_FAILED as error:
            refusal = _reason(error)
            await self._move(EscrowStatus.RELEASE_FAILED, SYSTEM, refusal)
            await self._alert(RELEASE_REFUSED.name, f"release refused: {refusal}")
            return
        self._moved(EscrowStatus.RELEASED)

    async def _refund(self, request: EscrowRequest) -> None:
        """Return every debit to its source (one transaction with ``refunded``)."""
        await self._move(EscrowStatus.REFUNDING, request.actor, request.reason)
        settle = EscrowSettleInput(
            self._escrow.escrow_id, self._version, request.actor, request.reason
        )
        await self._step(EscrowActivities.refund_escrow, settle)
        self._moved(EscrowStatus.REFUNDED)

    def _payout_key(self) -> str:
        # The provider keeps its answer per key, a refusal too: an operator's retry after a
        # refusal is a new transfer, numbered by the escrow's own count of releases.
        base = f"escrow:{self._escrow.escrow_id}:release"
        return base if self._releases == 1 else f"{base}:{self._releases}"

    async def _run_order(self, action: Literal["release", "refund"], request: EscrowRequest) -> str:
        # An order accepted while funding was being recorded waits for its outcome. Two
        # updates accepted in one workflow task both passed their validators; the second is
        # refused here, before it changes anything.
        await workflow.wait_condition(lambda: self._status not in _FUNDING)
        self._refuse_unless_held("released" if action == "release" else "refunded")
        self._orders += 1
        ticket = self._orders
        self._order = _Order(action, request, ticket)
        await workflow.wait_condition(lambda: self._done >= ticket)
        return self._status

    def _refuse_unless_held(self, what: str, *, funding: bool = False) -> None:
        """Refuse (``ESCROW_REFUSED``) unless the escrow is held with no order under way (or,
        with ``funding``, still being funded: the order then waits for the outcome)."""
        held = (EscrowStatus.FUNDED, EscrowStatus.RELEASE_FAILED)
        if self._order is not None or self._status not in held + (_FUNDING if funding else ()):
            busy = f", {self._order.action} under way" if self._order is not None else ""
            raise ApplicationError(
                f"escrow {self._escrow.escrow_id} is {self._status}{busy}: it cannot be {what}",
                type=ESCROW_REFUSED,
                non_retryable=True,
            )

    # -- steps -----------------------------------------------------------------------------------

    async def _move(self, to: EscrowStatus, actor: str, reason: str | None) -> None:
        """Move the escrow (the step publishes the transition once committed)."""
        step = EscrowMoveInput(
            self._escrow.escrow_id, self._version, self._status, to, actor, reason
        )
        await self._step(EscrowActivities.move_escrow, step)
        self._moved(to)

    def _moved(self, to: EscrowStatus) -> None:
        # Each transition adds one to the escrow's version, which every step names so that a
        # stale attempt of an earlier one (the escrow came round since) changes nothing.
        self._status = to
        self._version += 1

    async def _step(self, activity: MethodAsyncSingleParam[EscrowActivities, A, R], arg: A) -> R:
        """One Postgres step of the saga (a refusal for good is raised)."""
        return await _local_first(activity, arg, ESCROW_STEP_TIMEOUT, ESCROW_STEP_RETRY)

    async def _publish(self, event_id: str) -> None:
        """Publish an event the saga did not commit itself (the api's ``created``)."""
        await _local_first(
            PublishActivities.publish_event, PublishInput(event_id), PUBLISH_TIMEOUT, PUBLISH_RETRY
        )

    async def _alert(self, kind: str, summary: str, *, resolve: bool = False) -> None:
        alert = EscrowAlertInput(self._escrow.escrow_id, kind, summary, resolve)
        await self._step(EscrowActivities.escrow_alert, alert)

    def _leg(self, source: EscrowSource) -> EscrowSourceInput:
        escrow = self._escrow
        return EscrowSourceInput(
            escrow.escrow_id, source.wallet_id, source.amount, escrow.currency, escrow.actor
        )

    async def _finish(self) -> str:
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._status


async def _local_first(
    activity: MethodAsyncSingleParam[Any, A, R],
    arg: A,
    timeout: timedelta,
    retry: RetryPolicy,
) -> R:
    """Run ``activity`` as a local activity for up to ``ESCROW_LOCAL_BUDGET``, retries included;
    still failing then, as a regular activity that the server retries until done (its retries
    add nothing to the history, where a long run of local retries would). A failure for good
    (non-retryable) is raised either way."""
    try:
        return await workflow.execute_local_activity_method(
            activity,
            arg,
            start_to_close_timeout=timeout,
            schedule_to_close_timeout=ESCROW_LOCAL_BUDGET,
            retry_policy=retry,
        )
    except (*STEP_FAILED, StepTimeout) as error:
        # Out of local budget, the failure is a timeout or the last retryable error.
        cause = _cause(error)
        retryable = isinstance(cause, ApplicationError) and not cause.non_retryable
        if not (isinstance(cause, StepTimeout) or retryable):
            raise
    return await workflow.execute_activity_method(
        activity, arg, start_to_close_timeout=timeout, retry_policy=retry
    )


def _cause(error: BaseException) -> BaseException | None:
    """Why a step failed: a regular activity's failure is an ActivityError with the activity's
    error as its cause, a local activity's failure is the activity's error itself."""
    return error.cause if isinstance(error, ActivityError) else error


def _reason(error: BaseException) -> str:
    """What a refusal said (the activity's ApplicationError), for the audit log."""
    cause = _cause(error)
    if isinstance(cause, ApplicationError):
        return f"{cause.type}: {cause.message}" if cause.type else cause.message
    return str(error)
