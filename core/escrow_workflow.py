"""Starting an escrow's saga: :data:`ESCROWS`, a kind of :mod:`core.workflow_starts`.

The api starts the saga right after the escrow commits and marks it started
(``escrows.workflow_started_at``, migration 0011); the worker's relay starts any escrow left
unmarked (Temporal away at create time, or the api dying between commit and start). The workflow
id is the escrow's, so however many times it is started, one saga runs.
"""

from __future__ import annotations

import asyncpg
from temporalio.common import SearchAttributePair

from core import escrow
from core.contracts import ESCROW_ID, MERCHANT_ID, EscrowInput, EscrowSource, escrow_workflow_id
from core.settings import Settings
from core.workflow_starts import WorkflowKind

__all__ = ["ESCROWS", "WORKFLOW_NAME"]

WORKFLOW_NAME = "EscrowWorkflow"
""":class:`workflows.escrow.EscrowWorkflow`, named so the api need not import it."""


async def _saga_input(pool: asyncpg.Pool, settings: Settings, row: asyncpg.Record) -> EscrowInput:
    """The saga's input: the escrow as created (its row and sources) and the saga's settings."""
    async with pool.acquire() as conn:
        sources = await escrow.sources(conn, row["id"])
    return EscrowInput(
        escrow_id=row["id"],
        merchant_id=row["merchant_id"],
        currency=row["currency"],
        amount=row["amount"],
        sources=[EscrowSource(s.wallet_id, s.amount) for s in sources],
        beneficiary_wallet=row["beneficiary_wallet"],
        beneficiary_account=row["beneficiary_account"],
        reference=row["reference"],
        expires_at=row["expires_at"].isoformat(),
        actor=row["created_by"],
        created_event_id=escrow.event_id(row["id"], escrow.CREATED_VERSION),
        compensation_alert_seconds=settings.escrow_compensation_alert_seconds,
        version=escrow.CREATED_VERSION,
    )


ESCROWS = WorkflowKind(
    name="escrow",
    table="escrows",
    columns=escrow.COLUMNS,
    workflow=WORKFLOW_NAME,
    workflow_id=escrow_workflow_id,
    task_queue=lambda settings: settings.task_queue,
    arguments=_saga_input,
    search_attributes=lambda row: [
        SearchAttributePair(MERCHANT_ID, row["merchant_id"]),
        SearchAttributePair(ESCROW_ID, row["id"]),
    ],
    summary=lambda row: f"escrow {row['id']} · {row['merchant_id']}",
)
"""Each escrow owns one :class:`workflows.escrow.EscrowWorkflow`."""
