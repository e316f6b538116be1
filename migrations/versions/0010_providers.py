"""Providers: downstream services called on the platform's behalf (the payout provider), each
behind the same circuit breaker as merchant endpoints (:mod:`activities.circuit_breaker`).

A row appears with a provider's first failure, keyed by its base URL.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""

from __future__ import annotations

from migrations.sql import create_schema, drop_tables

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SCHEMA = """
CREATE TABLE providers (
    base_url text PRIMARY KEY,
    consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    circuit_open_until timestamptz,
    circuit_trips integer NOT NULL DEFAULT 0 CHECK (circuit_trips >= 0)
)
"""


def upgrade() -> None:
    create_schema(SCHEMA)


def downgrade() -> None:
    drop_tables(["providers"])
