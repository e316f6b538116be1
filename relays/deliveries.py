"""The delivery relay: hands recorded deliveries to their lane workflows.

The ledger records deliveries in the transaction that produced their event, and operators'
replays and endpoint resumes mark deliveries for another cycle; each NOTIFYs. The relay claims
what is ready (a delivery whose current cycle was not handed over yet, for an active endpoint
or an email) with a short lease and starts its lane, ``delivery:{lane}``, with the delivery
(eagerly: the first attempt runs in this worker at once), or signals it to the lane already
running; the lane delivers its deliveries one at a time in seq order. If Temporal is down,
deliveries wait in Postgres. Once a minute the relay also hands over again any pending delivery
no lane has attempted for longer than the schedule allows.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import (
    DELIVERIES_CHANNEL,
    MERCHANT_ID,
    DeliveryRef,
    DeliveryStatus,
    LaneInput,
    delivery_lane_workflow_id,
)
from core.metrics import DELIVERIES_DISPATCHED
from core.settings import Settings
from relays.loop import NotifiedRelay
from workflows.delivery import DeliveryLaneWorkflow

__all__ = ["DeliveryRelay"]

LEASE_SECONDS = 5
HAND_OVER_TRIES = 3
RECONCILE_EVERY_SECONDS = 60.0
# Beyond the longest retry step, before a delivery nobody attempts counts as orphaned.
STALE_MARGIN_SECONDS = 600.0
log = logging.getLogger("switchboard.relay.deliveries")

_CLAIM = f"""
WITH ready AS (
    SELECT d.id FROM deliveries d
    LEFT JOIN endpoints ep ON ep.id = d.endpoint_id
    WHERE d.dispatched_cycle < d.cycle AND d.status = '{DeliveryStatus.PENDING}'
      AND (d.endpoint_id IS NULL OR ep.status <> 'paused')
      AND (d.relay_lease_until IS NULL OR d.relay_lease_until < clock_timestamp())
      AND (d.dispatch_after IS NULL OR d.dispatch_after <= clock_timestamp())
    ORDER BY d.created_at, d.seq
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE deliveries d SET relay_lease_until = clock_timestamp() + make_interval(secs => $2)
FROM ready WHERE d.id = ready.id
RETURNING d.id, d.lane, d.seq, d.cycle, d.merchant_id, d.channel, d.created_at
"""


class DeliveryRelay(NotifiedRelay):
    """Signal-with-starts one lane per ready delivery; see the module docstring."""

    channel = DELIVERIES_CHANNEL

    def __init__(self, pool: asyncpg.Pool, client: Client, settings: Settings) -> None:
        super().__init__(settings.database_url, settings.relay_sweep_seconds)
        self._pool = pool
        self._client = client
        self._settings = settings
        self._signals = asyncio.Semaphore(settings.relay_start_concurrency)
        self._reconciled_at = 0.0

    async def drain(self) -> int:
        total = 0
        while True:
            rows = await self._pool.fetch(
                _CLAIM, self._settings.relay_batch_size, float(LEASE_SECONDS)
            )
            if not rows:
                return total
            # Within a batch, a lane's deliveries are signalled in seq order.
            rows = sorted(rows, key=lambda row: (row["created_at"], row["seq"]))
            handed = await asyncio.gather(*map(self._hand_over, rows))
            done = [row for row, ok in zip(rows, handed, strict=True) if ok]
            # Only rows still under this lease: an attempt that handed one back meanwhile
            # (endpoint paused) cleared the lease, and must not be marked handed over.
            await self._pool.execute(
                "UPDATE deliveries d SET dispatched_cycle = greatest(d.dispatched_cycle, s.cycle),"
                " relay_lease_until = NULL FROM unnest($1::text[], $2::int[]) AS s(id, cycle)"
                " WHERE d.id = s.id AND d.relay_lease_until IS NOT NULL",
                [row["id"] for row in done],
                [row["cycle"] for row in done],
            )
            total += len(done)
            if len(done) < len(rows):
                refused = [row["id"] for row in rows if row not in done]
                await self._pool.execute(
                    "UPDATE deliveries SET relay_lease_until = NULL WHERE id = ANY($1::text[])",
                    refused,
                )
                raise ConnectionError(f"Temporal refused {len(refused)} deliveries")

    async def before_round(self) -> None:
        # Rarely: hand over again what no lane has attempted for far longer than any retry
        # step (a lane terminated in the Web UI, say). Lanes ignore a delivery they hold.
        now = time.monotonic()
        if now - self._reconciled_at < RECONCILE_EVERY_SECONDS:
            return
        self._reconciled_at = now
        settings = self._settings
        stale_after = (
            max(settings.delivery_retry_schedule, default=0) * (1 + settings.delivery_jitter)
            + settings.delivery_timeout_seconds
            + STALE_MARGIN_SECONDS
        )
        reset = await self._pool.execute(
            "UPDATE deliveries SET dispatched_cycle = cycle - 1"
            f" WHERE status = '{DeliveryStatus.PENDING}' AND dispatched_cycle = cycle"
            " AND coalesce(last_attempt_at, created_at) < clock_timestamp()"
            " - make_interval(secs => $1)",
            stale_after,
        )
        if reset != "UPDATE 0":
            log.warning("handing over stale deliveries again: %s", reset)

    async def _hand_over(self, row: asyncpg.Record) -> bool:
        ref = DeliveryRef(row["id"], row["seq"], row["cycle"])
        async with self._signals:
            try:
                how = await self._start_or_signal(row, ref)
            except Exception as error:
                DELIVERIES_DISPATCHED.labels("failed").inc()
                log.warning("could not hand %s to its lane: %r", row["id"], error)
                return False
        DELIVERIES_DISPATCHED.labels(how).inc()
        return True

    async def _start_or_signal(self, row: asyncpg.Record, ref: DeliveryRef) -> str:
        """Start the lane with this delivery, or signal it to the lane already running.

        Most lanes are new (one per payment and endpoint), and a plain start can be eager: the
        first workflow task runs in this process without a round trip through matching, which
        signal-with-start cannot do. A lane that finishes between the two calls is started anew.
        """
        settings = self._settings
        workflow_id = delivery_lane_workflow_id(row["lane"])
        lane = LaneInput(
            lane=row["lane"],
            retry_schedule_seconds=list(settings.delivery_retry_schedule),
            jitter=settings.delivery_jitter,
            attempt_timeout_seconds=settings.delivery_timeout_seconds,
            pending=[ref],
        )
        for _ in range(HAND_OVER_TRIES):
            try:
                await self._client.start_workflow(
                    DeliveryLaneWorkflow.run,
                    lane,
                    id=workflow_id,
                    task_queue=settings.delivery_task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                    search_attributes=TypedSearchAttributes(
                        [SearchAttributePair(MERCHANT_ID, row["merchant_id"])]
                    ),
                    static_summary=f"{row['channel']} deliveries · {row['lane']}",
                    request_eager_start=True,
                )
            except WorkflowAlreadyStartedError:
                try:
                    await self._client.get_workflow_handle(workflow_id).signal(
                        DeliveryLaneWorkflow.deliver, ref
                    )
                except RPCError as error:
                    if error.status != RPCStatusCode.NOT_FOUND:
                        raise
                    continue  # the lane finished meanwhile: start it again
                return "signalled"
            return "started"
        raise ConnectionError(f"lane {workflow_id} kept finishing while {ref.delivery_id} waited")
