"""Exchange request workflows: whether each request's workflow was started, the customer's email
address for notifications, and the analytics events the workflows record.

``workflow_started_at`` stays NULL until a start of the request's workflow returned (from the
api right after create, or from the worker's exchange relay, which starts any request left
without one). Changing it is not a transition: the state-machine trigger of 0006 lets it pass.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from __future__ import annotations

from alembic import op

from migrations.sql import drop_tables

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

STATEMENTS = [
    "ALTER TABLE exchange_requests ADD COLUMN customer_email text"
    " CHECK (length(customer_email) BETWEEN 3 AND 254)",
    "ALTER TABLE exchange_requests ADD COLUMN workflow_started_at timestamptz",
    "CREATE INDEX exchange_requests_without_workflow ON exchange_requests (created_at)"
    " WHERE workflow_started_at IS NULL",
    """
    CREATE TABLE exchange_analytics_events (
        id bigserial PRIMARY KEY,
        request_id text NOT NULL REFERENCES exchange_requests (id),
        merchant_id text NOT NULL,
        version integer NOT NULL,
        status text NOT NULL,
        assignee text,
        entered_at timestamptz NOT NULL,
        seconds_since_created double precision NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        UNIQUE (request_id, version)
    )
    """,
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    drop_tables(["exchange_analytics_events"])
    op.execute("DROP INDEX IF EXISTS exchange_requests_without_workflow")
    op.execute("ALTER TABLE exchange_requests DROP COLUMN IF EXISTS workflow_started_at")
    op.execute("ALTER TABLE exchange_requests DROP COLUMN IF EXISTS customer_email")
