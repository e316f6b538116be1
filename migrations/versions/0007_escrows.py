"""Escrows: escrow rows, their sources, their holding accounts and the database-held state
machine.

Each escrow holds its money in a ledger account of its own (kind ``escrow``, the escrow's id),
which must exist before the escrow row, so "wallets plus escrow holdings" is read from the
ledger. ``escrow_transitions`` is the drawing of :data:`core.contracts.ESCROW_TRANSITIONS` as rows
(written once here; a test compares the two), and a trigger refuses any insert or status change
of ``escrows`` that is not one of them, whoever writes it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

from migrations.sql import drop_tables, transition_table, transition_trigger

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

STATUSES = (
    "created",
    "funding",
    "funded",
    "releasing",
    "released",
    "release_failed",
    "refunding",
    "refunded",
    "failed",
)
TRANSITIONS: list[tuple[str | None, str]] = [
    (None, "created"),
    ("created", "funding"),
    ("funding", "funded"),
    ("funding", "failed"),
    ("funded", "releasing"),
    ("funded", "refunding"),
    ("releasing", "released"),
    ("releasing", "release_failed"),
    ("release_failed", "releasing"),
    ("release_failed", "refunding"),
    ("refunding", "refunded"),
]
"""Frozen with this revision: a later change to the drawing is a migration of its own."""

_STATUS_LIST = ", ".join(f"'{status}'" for status in STATUSES)

# One statement each: function bodies hold ';' line ends.
STATEMENTS = [
    *transition_table("escrow", TRANSITIONS),
    f"""
    CREATE TABLE escrows (
        id text PRIMARY KEY CHECK (id ~ '^esc_[0-9a-f]{{32}}$'),
        merchant_id text NOT NULL REFERENCES merchants (id),
        currency text NOT NULL CHECK (currency ~ '^[A-Z]{{3}}$'),
        amount bigint NOT NULL CHECK (amount > 0),
        beneficiary_wallet text,
        beneficiary_account text CHECK (length(beneficiary_account) BETWEEN 1 AND 200),
        reference text NOT NULL CHECK (length(reference) BETWEEN 1 AND 200),
        expires_at timestamptz NOT NULL,
        status text NOT NULL CHECK (status IN ({_STATUS_LIST})),
        payout_transfer_id text,
        created_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        version integer NOT NULL DEFAULT 1,
        FOREIGN KEY (id, currency) REFERENCES ledger_accounts (id, currency),
        FOREIGN KEY (beneficiary_wallet, currency) REFERENCES wallets (id, currency),
        CONSTRAINT escrows_one_beneficiary
            CHECK ((beneficiary_wallet IS NULL) <> (beneficiary_account IS NULL))
    )
    """,
    "CREATE INDEX escrows_by_merchant ON escrows (merchant_id, created_at)",
    "CREATE INDEX escrows_by_status ON escrows (status, created_at)",
    """
    CREATE TABLE escrow_sources (
        escrow_id text NOT NULL REFERENCES escrows (id),
        wallet_id text NOT NULL,
        currency text NOT NULL,
        amount bigint NOT NULL CHECK (amount > 0),
        PRIMARY KEY (escrow_id, wallet_id),
        FOREIGN KEY (wallet_id, currency) REFERENCES wallets (id, currency)
    )
    """,
    "CREATE INDEX escrow_sources_by_wallet ON escrow_sources (wallet_id)",
    *transition_trigger("escrow", "escrows"),
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    drop_tables(["escrow_sources", "escrows", "escrow_transitions"])
    op.execute("DROP FUNCTION IF EXISTS escrow_transition()")
