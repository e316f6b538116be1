"""Outbound deliveries: merchant endpoints and their secrets, deliveries (webhooks and emails)
and the log of every delivery attempt.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from migrations.sql import create_schema, drop_tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE endpoints (
    id text PRIMARY KEY,
    merchant_id text NOT NULL,
    url text NOT NULL,
    description text NOT NULL DEFAULT '',
    -- NULL receives every event type.
    event_types text[],
    status text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'paused', 'disabled', 'deleted')),
    status_reason text,
    consecutive_failures integer NOT NULL DEFAULT 0,
    failing_since timestamptz,
    last_success_at timestamptz,
    last_failure_at timestamptz,
    -- Circuit breaker: while open, attempts wait instead of dialling; one probe after it.
    circuit_open_until timestamptz,
    circuit_trips integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX endpoints_by_merchant ON endpoints (merchant_id) WHERE status <> 'deleted';

-- Every unexpired secret signs each delivery, so receivers on the old and the new secret both
-- verify during a rotation's overlap.
CREATE TABLE endpoint_secrets (
    id bigserial PRIMARY KEY,
    endpoint_id text NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    secret text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
CREATE INDEX endpoint_secrets_endpoint ON endpoint_secrets (endpoint_id);

-- One row per (event, destination), written in the ledger transaction that produced the event,
-- or an operational notice to a merchant (no event; its email's context in `notice`).
-- The id is the Standard Webhooks `webhook-id`, stable across every attempt and replay.
CREATE TABLE deliveries (
    id text PRIMARY KEY,
    event_id text REFERENCES events (event_id),
    merchant_id text NOT NULL,
    seq bigint NOT NULL,
    channel text NOT NULL CHECK (channel IN ('webhook', 'email')),
    endpoint_id text REFERENCES endpoints (id),
    recipient text,
    template text,
    notice jsonb,
    -- Deliveries sharing a lane go out one at a time, in seq order.
    lane text NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'succeeded', 'dead_lettered', 'cancelled')),
    attempts integer NOT NULL DEFAULT 0,
    cycle integer NOT NULL DEFAULT 0,
    dispatched_cycle integer NOT NULL DEFAULT -1,
    relay_lease_until timestamptz,
    -- Bulk replays are released gradually (their rate cap).
    dispatch_after timestamptz,
    last_error text,
    last_attempt_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    CHECK ((channel = 'webhook') = (endpoint_id IS NOT NULL)),
    CHECK ((channel = 'email') = (recipient IS NOT NULL AND template IS NOT NULL)),
    CHECK ((event_id IS NULL) = (notice IS NOT NULL))
);
CREATE INDEX deliveries_to_dispatch ON deliveries (created_at, seq)
    WHERE dispatched_cycle < cycle AND status = 'pending';
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, created_at);
CREATE INDEX deliveries_by_event ON deliveries (event_id);
CREATE INDEX deliveries_open_by_lane ON deliveries (lane, seq) WHERE status = 'pending';
CREATE INDEX deliveries_dead ON deliveries (endpoint_id, finished_at)
    WHERE status = 'dead_lettered';

CREATE TABLE delivery_attempts (
    id bigserial PRIMARY KEY,
    delivery_id text NOT NULL REFERENCES deliveries (id),
    endpoint_id text,
    attempt integer NOT NULL,
    cycle integer NOT NULL,
    -- When the schedule meant the attempt to run (workflow time), and when it ran.
    scheduled_at timestamptz NOT NULL,
    started_at timestamptz NOT NULL,
    latency_ms double precision NOT NULL,
    outcome text NOT NULL,
    status_code integer,
    error text,
    response_sha256 bytea,
    response_head text,
    UNIQUE (delivery_id, cycle, attempt)
);
CREATE INDEX delivery_attempts_by_endpoint ON delivery_attempts (endpoint_id, id);
"""

TABLES = ["delivery_attempts", "deliveries", "endpoint_secrets", "endpoints"]


def upgrade() -> None:
    create_schema(SCHEMA)


def downgrade() -> None:
    drop_tables(TABLES)
