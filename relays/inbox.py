"""The inbox relay: turns recorded webhooks into workflow starts, at the engine's pace.

The ingress only writes the inbox (``webhooks`` rows, status ``received``) and NOTIFYs. The relay,
hosted by the worker process, LISTENs, claims rows with a lease (``FOR UPDATE SKIP LOCKED``, so
several workers can share the inbox), starts each workflow with eager start and an id derived
from the webhook, then marks the rows started. Money is claimed before balance updates, and in
arrival order within a priority. It keeps at most ``relay_max_in_flight`` workflows running, so a
burst waits in Postgres, where priority is exact, rather than in Temporal's task queue. If
Temporal is down, rows simply stay ``received`` until it is back.

The budget cannot be taken by one partner or one kind of failure: a partner holding its
``relay_partner_share`` of it waits while others go by, and a workflow still running
``relay_stalled_after_seconds`` after its start (retrying, or queued behind an earlier event of
its entity) stops counting, so healthy traffic keeps flowing beside stuck traffic.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import UTC, datetime

import asyncpg
from temporalio.client import Client
from temporalio.common import (
    Priority,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from core.contracts import (
    ENTITY_ID,
    EVENT_TYPE,
    INBOX_CHANNEL,
    MERCHANT_ID,
    PARTNER_ID,
    WEBHOOK_ID,
    WebhookInput,
    WebhookStatus,
    webhook_workflow_id,
)
from core.metrics import INBOX_DEPTH, RELAY_LAG, WORKFLOWS_STARTED
from core.settings import Settings
from relays.loop import NotifiedRelay
from workflows.webhook import WebhookWorkflow

__all__ = ["InboxRelay"]

# Starting is idempotent (the workflow id is the webhook's), so the lease only stops two relays
# doing the same start at once; a short one lets a restarted worker pick up a dead relay's rows.
LEASE_SECONDS = 5
log = logging.getLogger("switchboard.relay")

_CLAIM = """
WITH in_flight AS (
    -- Only workflows started recently count: one stalled longer (retrying, or queued behind an
    -- earlier event) must not hold a slot that healthy traffic needs.
    SELECT partner_id, count(*)::int AS n FROM webhooks
    WHERE status = 'started'
      AND workflow_started_at > clock_timestamp() - make_interval(secs => $5)
    GROUP BY partner_id
), capacity AS (
    SELECT greatest(0, $2 - coalesce((SELECT sum(n) FROM in_flight), 0))::int AS n
), next_in_line AS (
    -- Each partner's oldest waiting rows, up to what is left of its share of the budget, so a
    -- partner holding its share waits while the others go past it; then money first, by age.
    SELECT id FROM webhooks WHERE id IN (
        SELECT turn.id FROM partners p
        CROSS JOIN LATERAL (
            SELECT w.id, w.priority FROM webhooks w
            WHERE w.partner_id = p.id AND w.status = 'received'
              AND (w.relay_lease_until IS NULL OR w.relay_lease_until < clock_timestamp())
            ORDER BY w.priority, w.id
            LIMIT least($1, greatest(0, $4 - coalesce(
                (SELECT n FROM in_flight WHERE in_flight.partner_id = p.id), 0)))
        ) turn
        ORDER BY turn.priority, turn.id
        LIMIT least($1, (SELECT n FROM capacity))
    )
    FOR UPDATE SKIP LOCKED
), waited_on AS (
    -- Earlier events that running workflows wait for (per-entity order) are claimed even at
    -- capacity: otherwise a relay full of waiting workflows could never start what they need.
    SELECT earlier.id FROM webhooks running
    JOIN webhooks earlier ON earlier.partner_id = running.partner_id
        AND earlier.entity_key = running.entity_key AND earlier.id < running.id
    WHERE running.status = 'started' AND earlier.status = 'received'
      AND (earlier.relay_lease_until IS NULL OR earlier.relay_lease_until < clock_timestamp())
    LIMIT $1
    FOR UPDATE OF earlier SKIP LOCKED
), claimed AS (
    UPDATE webhooks SET relay_lease_until = clock_timestamp() + make_interval(secs => $3)
    WHERE id IN (SELECT id FROM next_in_line UNION SELECT id FROM waited_on)
    RETURNING id, event_id, partner_id, webhook_id, event_type, entity_key, merchant_id,
              priority, run_count, recorded_at
)
-- RETURNING comes back in table order; starts must go out money first, then by arrival.
SELECT * FROM claimed ORDER BY priority, id
"""


class InboxRelay(NotifiedRelay):
    """Starts one :class:`WebhookWorkflow` per recorded webhook; see the module docstring."""

    channel = INBOX_CHANNEL

    def __init__(self, pool: asyncpg.Pool, client: Client, settings: Settings) -> None:
        super().__init__(settings.database_url, settings.relay_sweep_seconds)
        self._pool = pool
        self._client = client
        self._settings = settings
        self._starts = asyncio.Semaphore(settings.relay_start_concurrency)
        self._partner_max_in_flight = max(
            1, math.ceil(settings.relay_max_in_flight * settings.relay_partner_share)
        )
        self._depth_reported_at = 0.0

    async def drain(self) -> int:
        """Start workflows for every startable row now; returns how many were started."""
        total = 0
        while True:
            rows = await self._pool.fetch(
                _CLAIM,
                self._settings.relay_batch_size,
                self._settings.relay_max_in_flight,
                float(LEASE_SECONDS),
                self._partner_max_in_flight,
                self._settings.relay_stalled_after_seconds,
            )
            if not rows:
                return total
            results = await asyncio.gather(*map(self._start, rows))
            started = [(row, at) for row, at in zip(rows, results, strict=True) if at]
            if started:
                # The workflow may already have finished (eager start): keep its final status.
                # The run count guards against marking a row an operator has replayed since.
                await self._pool.execute(
                    "UPDATE webhooks w SET workflow_started_at = coalesce(w.workflow_started_at,"
                    " s.at), relay_lease_until = NULL, status = CASE w.status"
                    " WHEN $4::text THEN $5::text ELSE w.status END"
                    " FROM unnest($1::bigint[], $2::timestamptz[], $3::int[]) AS s(id, at, run)"
                    " WHERE w.id = s.id AND w.run_count = s.run",
                    [row["id"] for row, _ in started],
                    [at for _, at in started],
                    [row["run_count"] for row, _ in started],
                    WebhookStatus.RECEIVED,
                    WebhookStatus.STARTED,
                )
                total += len(started)
            if len(started) < len(rows):
                refused = {row["id"] for row in rows} - {row["id"] for row, _ in started}
                await self._pool.execute(
                    "UPDATE webhooks SET relay_lease_until = NULL WHERE id = ANY($1::bigint[])",
                    list(refused),
                )
                raise ConnectionError(f"Temporal refused {len(refused)} starts")

    async def more_is_ready_soon(self) -> bool:
        waiting = await self._pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM webhooks WHERE status = 'received'"
            " AND (relay_lease_until IS NULL OR relay_lease_until < clock_timestamp()))"
        )
        return bool(waiting)

    async def before_round(self) -> None:
        # Counting a deep backlog is not free; once a second is plenty for a gauge.
        now = time.monotonic()
        if now - self._depth_reported_at < 1.0:
            return
        self._depth_reported_at = now
        INBOX_DEPTH.set(
            await self._pool.fetchval("SELECT count(*) FROM webhooks WHERE status = 'received'")
        )

    async def _start(self, row: asyncpg.Record) -> datetime | None:
        """Start the row's workflow; returns when the start was requested, or None if refused."""
        workflow_id = webhook_workflow_id(row["partner_id"], row["webhook_id"], row["run_count"])
        attributes = [
            SearchAttributePair(PARTNER_ID, row["partner_id"]),
            SearchAttributePair(EVENT_TYPE, row["event_type"]),
            SearchAttributePair(WEBHOOK_ID, row["webhook_id"]),
        ]
        if row["merchant_id"]:
            attributes.append(SearchAttributePair(MERCHANT_ID, row["merchant_id"]))
        if row["entity_key"]:
            attributes.append(SearchAttributePair(ENTITY_ID, row["entity_key"]))
        async with self._starts:
            requested_at = datetime.now(UTC)
            try:
                await self._client.start_workflow(
                    WebhookWorkflow.run,
                    WebhookInput(
                        event_id=row["event_id"],
                        partner_id=row["partner_id"],
                        webhook_id=row["webhook_id"],
                        event_type=row["event_type"],
                        dependency_window_seconds=self._settings.dependency_window_seconds,
                    ),
                    id=workflow_id,
                    task_queue=self._settings.task_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    search_attributes=TypedSearchAttributes(attributes),
                    memo={"event_id": row["event_id"], "recorded_at": str(row["recorded_at"])},
                    static_summary=_summary(row),
                    priority=Priority(priority_key=row["priority"]),
                    request_eager_start=True,
                )
            except WorkflowAlreadyStartedError:
                WORKFLOWS_STARTED.labels("already_started").inc()
            except Exception as error:
                WORKFLOWS_STARTED.labels("failed").inc()
                log.warning("could not start %s: %r", workflow_id, error)
                return None
            else:
                WORKFLOWS_STARTED.labels("started").inc()
        RELAY_LAG.observe((requested_at - row["recorded_at"]).total_seconds())
        return requested_at


def _summary(row: asyncpg.Record) -> str:
    subject = row["entity_key"] or row["merchant_id"] or "unrouted"
    return f"{row['event_type']} · {subject} · from {row['partner_id']} ({row['event_id']})"
