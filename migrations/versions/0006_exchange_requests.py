"""Exchange requests: an operator-handled request (e.g. fiat-crypto), its state machine held by
the database as well as the code.

``exchange_request_transitions`` is the drawing of :data:`core.contracts.EXCHANGE_TRANSITIONS`
as rows (written once here; a test compares the two), and a trigger refuses any insert or status
change of ``exchange_requests`` that is not one of them, whoever writes it. A change of assignee
is a transition too (``assigned → assigned`` is an admin's reassignment).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

from migrations.sql import drop_tables, transition_table, transition_trigger

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

STATUSES = ("created", "pending", "assigned", "processing", "completed", "cancelled", "failed")
TRANSITIONS: list[tuple[str | None, str]] = [
    (None, "created"),
    ("created", "pending"),
    ("created", "cancelled"),
    ("pending", "assigned"),
    ("pending", "cancelled"),
    ("assigned", "pending"),
    ("assigned", "assigned"),
    ("assigned", "processing"),
    ("assigned", "cancelled"),
    ("assigned", "failed"),
    ("processing", "processing"),
    ("processing", "completed"),
    ("processing", "failed"),
]
"""Frozen with this revision: a later change to the drawing is a migration of its own."""

_STATUS_LIST = ", ".join(f"'{status}'" for status in STATUSES)

# One statement each: function bodies hold ';' line ends.
STATEMENTS = [
    *transition_table("exchange_request", TRANSITIONS),
    f"""
    CREATE TABLE exchange_requests (
        id text PRIMARY KEY CHECK (id ~ '^exr_[0-9a-f]{{32}}$'),
        merchant_id text NOT NULL REFERENCES merchants (id),
        customer_id text NOT NULL CHECK (length(customer_id) BETWEEN 1 AND 200),
        from_amount bigint NOT NULL CHECK (from_amount > 0),
        from_currency text NOT NULL CHECK (from_currency ~ '^[A-Z][A-Z0-9]{{2,9}}$'),
        to_currency text NOT NULL CHECK (to_currency ~ '^[A-Z][A-Z0-9]{{2,9}}$'),
        quote bigint CHECK (quote > 0),
        status text NOT NULL CHECK (status IN ({_STATUS_LIST})),
        assignee text,
        created_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        version integer NOT NULL DEFAULT 1,
        CHECK (from_currency <> to_currency),
        CONSTRAINT exchange_requests_assignee CHECK (CASE
            WHEN status IN ('created', 'pending') THEN assignee IS NULL
            WHEN status = 'cancelled' THEN true
            ELSE assignee IS NOT NULL END)
    )
    """,
    "CREATE INDEX exchange_requests_queue ON exchange_requests (status, created_at)",
    "CREATE INDEX exchange_requests_by_customer"
    " ON exchange_requests (merchant_id, customer_id, created_at)",
    "CREATE INDEX exchange_requests_by_assignee ON exchange_requests (assignee, status)",
    *transition_trigger(
        "exchange_request",
        "exchange_requests",
        unchanged="NEW.status = OLD.status AND NEW.assignee IS NOT DISTINCT FROM OLD.assignee",
    ),
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    drop_tables(["exchange_requests", "exchange_request_transitions"])
    op.execute("DROP FUNCTION IF EXISTS exchange_request_transition()")
