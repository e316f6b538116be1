"""Tenancy: merchants are linked to the partners that process for them; balances belong to a
(partner, merchant); merchant ids have one format; dead letters say why; a stalled workflow
stops counting against the relay's budget.

Existing data is carried over: every (partner, merchant) pair that already took effect is
linked, and each stored balance is attributed to the partner whose webhook set it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

from migrations.sql import create_schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = """
ALTER TABLE partners ADD COLUMN auto_onboard_merchants boolean NOT NULL DEFAULT false;

-- Existing rows keep their ids; new ones must be addressable (core/formats.py IDENTIFIER).
ALTER TABLE merchants ADD CONSTRAINT merchants_id_format
    CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$') NOT VALID;

CREATE TABLE merchant_partners (
    merchant_id text NOT NULL REFERENCES merchants (id),
    partner_id text NOT NULL REFERENCES partners (id),
    linked_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, partner_id)
);

INSERT INTO merchant_partners (merchant_id, partner_id, linked_by)
SELECT DISTINCT w.merchant_id, w.partner_id, 'migration 0003'
FROM webhooks w JOIN events e USING (event_id) JOIN merchants m ON m.id = w.merchant_id;

ALTER TABLE balances ADD COLUMN partner_id text;

UPDATE balances b SET partner_id = w.partner_id FROM webhooks w WHERE w.event_id = b.event_id;

DELETE FROM balances WHERE partner_id IS NULL;

ALTER TABLE balances ALTER COLUMN partner_id SET NOT NULL;

ALTER TABLE balances DROP CONSTRAINT balances_pkey;

ALTER TABLE balances ADD PRIMARY KEY (partner_id, merchant_id, currency);

CREATE INDEX balances_by_merchant ON balances (merchant_id);

-- Why a webhook was parked, as a stable code: 'unlinked_merchant' ones replay on linking.
ALTER TABLE dead_letters ADD COLUMN cause text NOT NULL DEFAULT 'other';

CREATE INDEX dead_letters_by_cause ON dead_letters (cause) WHERE replayed_at IS NULL;

-- The relay counts only recently started workflows against its budget.
DROP INDEX webhooks_in_flight;

CREATE INDEX webhooks_in_flight ON webhooks (workflow_started_at, partner_id)
    WHERE status = 'started';

-- The relay takes each partner's oldest waiting rows in turn.
CREATE INDEX webhooks_to_start_by_partner ON webhooks (partner_id, priority, id)
    WHERE status = 'received'
"""


def upgrade() -> None:
    create_schema(SCHEMA)


def downgrade() -> None:
    op.execute("DROP INDEX webhooks_to_start_by_partner")
    op.execute("DROP INDEX webhooks_in_flight")
    op.execute("CREATE INDEX webhooks_in_flight ON webhooks (id) WHERE status = 'started'")
    op.execute("DROP INDEX dead_letters_by_cause")
    op.execute("ALTER TABLE dead_letters DROP COLUMN cause")
    op.execute("DROP INDEX balances_by_merchant")
    op.execute("ALTER TABLE balances DROP CONSTRAINT balances_pkey")
    op.execute(
        "DELETE FROM balances a USING balances b WHERE a.merchant_id = b.merchant_id"
        " AND a.currency = b.currency AND a.as_of < b.as_of"
    )
    op.execute("ALTER TABLE balances ADD PRIMARY KEY (merchant_id, currency)")
    op.execute("ALTER TABLE balances DROP COLUMN partner_id")
    op.execute("DROP TABLE merchant_partners")
    op.execute("ALTER TABLE merchants DROP CONSTRAINT merchants_id_format")
    op.execute("ALTER TABLE partners DROP COLUMN auto_onboard_merchants")
