"""Foundation schema: partners, the webhook inbox, payments, refunds, balances, the merchant
events log, audit log, dead letters, alerts and operator API keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from migrations.sql import create_schema, drop_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE partners (
    id text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    name text NOT NULL,
    rate_limit_per_second integer CHECK (rate_limit_per_second > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Several live secrets per partner make rotation possible: a rotated-out secret keeps
-- verifying until expires_at.
CREATE TABLE partner_secrets (
    id bigserial PRIMARY KEY,
    partner_id text NOT NULL REFERENCES partners (id) ON DELETE CASCADE,
    secret text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
CREATE INDEX partner_secrets_partner ON partner_secrets (partner_id);

CREATE TABLE merchants (
    id text PRIMARY KEY,
    name text,
    email text,
    last_seq bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The inbox: one row per accepted webhook, written before the 2xx. (partner_id, webhook_id)
-- is unique forever, which is the durable deduplication.
CREATE TABLE webhooks (
    id bigserial PRIMARY KEY,
    event_id text NOT NULL UNIQUE,
    partner_id text NOT NULL REFERENCES partners (id),
    webhook_id text NOT NULL,
    body_sha256 bytea NOT NULL,
    event_type text NOT NULL,
    entity_key text,
    merchant_id text,
    priority smallint NOT NULL,
    payload jsonb NOT NULL,
    status text NOT NULL DEFAULT 'received',
    run_count integer NOT NULL DEFAULT 0,
    workflow_id text,
    received_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    relay_lease_until timestamptz,
    workflow_started_at timestamptz,
    processed_at timestamptz,
    published_at timestamptz,
    detail text,
    UNIQUE (partner_id, webhook_id)
);
CREATE INDEX webhooks_to_start ON webhooks (priority, id) WHERE status = 'received';
CREATE INDEX webhooks_in_flight ON webhooks (id) WHERE status = 'started';
CREATE INDEX webhooks_open_by_entity ON webhooks (partner_id, entity_key, id)
    WHERE status IN ('received', 'started', 'waiting');
CREATE INDEX webhooks_by_merchant ON webhooks (merchant_id, id);

CREATE TABLE payments (
    partner_id text NOT NULL,
    payment_id text NOT NULL,
    merchant_id text NOT NULL,
    amount bigint NOT NULL CHECK (amount >= 0),
    currency text NOT NULL,
    refunded_amount bigint NOT NULL DEFAULT 0
        CHECK (refunded_amount >= 0 AND refunded_amount <= amount),
    status text NOT NULL,
    failure_code text,
    customer_email text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partner_id, payment_id)
);

CREATE TABLE refunds (
    partner_id text NOT NULL,
    refund_id text NOT NULL,
    payment_id text NOT NULL,
    merchant_id text NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    currency text NOT NULL,
    status text NOT NULL,
    event_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partner_id, refund_id),
    FOREIGN KEY (partner_id, payment_id) REFERENCES payments (partner_id, payment_id)
);

CREATE TABLE balances (
    merchant_id text NOT NULL,
    currency text NOT NULL,
    available bigint NOT NULL,
    pending bigint NOT NULL,
    as_of timestamptz NOT NULL,
    event_id text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, currency)
);

-- Append-only: every state transition of a payment, refund, alert or parked webhook.
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    entity_type text NOT NULL,
    entity_id text NOT NULL,
    from_state text,
    to_state text NOT NULL,
    actor text NOT NULL,
    reason text,
    event_id text,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX audit_log_entity ON audit_log (entity_type, entity_id, id);
CREATE INDEX audit_log_event ON audit_log (event_id);

-- What merchants see, in order: seq increases by one per merchant with no gaps.
CREATE TABLE events (
    merchant_id text NOT NULL,
    seq bigint NOT NULL,
    event_id text NOT NULL UNIQUE,
    type text NOT NULL,
    data jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (merchant_id, seq)
);

CREATE TABLE dead_letters (
    id bigserial PRIMARY KEY,
    event_id text NOT NULL UNIQUE REFERENCES webhooks (event_id),
    reason text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    replayed_at timestamptz,
    replay_count integer NOT NULL DEFAULT 0
);

CREATE TABLE alerts (
    id bigserial PRIMARY KEY,
    dedup_key text NOT NULL,
    kind text NOT NULL,
    severity text NOT NULL,
    summary text NOT NULL,
    details jsonb NOT NULL DEFAULT '{}',
    status text NOT NULL DEFAULT 'open',
    occurrences integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);
CREATE UNIQUE INDEX alerts_one_open_per_key ON alerts (dedup_key) WHERE status <> 'resolved';

CREATE TABLE api_keys (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    key_sha256 bytea NOT NULL UNIQUE,
    scopes text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
"""

TABLES = [
    "api_keys",
    "alerts",
    "dead_letters",
    "events",
    "audit_log",
    "balances",
    "refunds",
    "payments",
    "webhooks",
    "merchants",
    "partner_secrets",
    "partners",
]


def upgrade() -> None:
    create_schema(SCHEMA)


def downgrade() -> None:
    drop_tables(TABLES)
