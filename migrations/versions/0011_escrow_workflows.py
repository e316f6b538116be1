"""Escrow workflows: whether each escrow's saga was started.

``workflow_started_at`` stays NULL until a start of the escrow's workflow returned (from the api
right after create, or from the worker's workflow starts relay, which starts any escrow left
without one: :mod:`core.workflow_starts`). Changing it is not a transition: the state-machine
trigger of 0007 lets it pass. An escrow that already moved past ``created`` had its saga started,
so it is marked here; one still ``created`` is left for the relay to start.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-09
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

STATEMENTS = [
    "ALTER TABLE escrows ADD COLUMN workflow_started_at timestamptz",
    "UPDATE escrows SET workflow_started_at = updated_at WHERE status <> 'created'",
    "CREATE INDEX escrows_without_workflow ON escrows (created_at)"
    " WHERE workflow_started_at IS NULL",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS escrows_without_workflow")
    op.execute("ALTER TABLE escrows DROP COLUMN IF EXISTS workflow_started_at")
