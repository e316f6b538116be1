"""On-call: alert groups (one escalation each), their timeline, and silences.

An alert (one dedup key, counting occurrences) joins the open group of its route's group key;
each group runs one escalation workflow and owns one Slack message and one PagerDuty incident.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

from migrations.sql import create_schema, drop_tables

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCHEMA = """
-- Group ids are random, not a sequence: they name a Temporal workflow and a PagerDuty incident,
-- which must not collide with another database's (another deployment, a restored backup).
CREATE TABLE alert_groups (
    id text PRIMARY KEY DEFAULT 'ag_' || replace(gen_random_uuid()::text, '-', ''),
    group_key text NOT NULL,
    route text NOT NULL,
    kind text NOT NULL,
    severity text NOT NULL,
    summary text NOT NULL,
    status text NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'acknowledged', 'resolved')),
    workflow_id text,
    slack_channel text,
    slack_ts text,
    pages integer NOT NULL DEFAULT 0,
    summarized integer NOT NULL DEFAULT 0,
    opened_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    acknowledged_at timestamptz,
    acknowledged_by text,
    resolved_at timestamptz,
    resolved_by text
);
CREATE UNIQUE INDEX alert_groups_one_open_per_key ON alert_groups (group_key)
    WHERE status <> 'resolved';

ALTER TABLE alerts ADD COLUMN group_id text REFERENCES alert_groups (id);

ALTER TABLE alerts ADD COLUMN resolved_by text;

-- Alerts the relay has not yet put in a group, or whose resolution it has not yet told.
CREATE INDEX alerts_to_route ON alerts (id) WHERE group_id IS NULL AND status = 'open';

-- What happened to a group, for the operator's timeline: raised, grouped, notified where,
-- silenced, acknowledged by whom, escalated, resolved.
CREATE TABLE alert_timeline (
    id bigserial PRIMARY KEY,
    group_id text NOT NULL REFERENCES alert_groups (id),
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    action text NOT NULL,
    channel text,
    step integer NOT NULL DEFAULT 0,
    actor text NOT NULL,
    detail text
);
CREATE INDEX alert_timeline_by_group ON alert_timeline (group_id, id);

CREATE TABLE silences (
    id bigserial PRIMARY KEY,
    matchers jsonb NOT NULL,
    starts_at timestamptz NOT NULL,
    ends_at timestamptz NOT NULL CHECK (ends_at > starts_at),
    created_by text NOT NULL,
    comment text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


def upgrade() -> None:
    create_schema(SCHEMA)


def downgrade() -> None:
    drop_tables(["silences", "alert_timeline"])
    create_schema(
        "ALTER TABLE alerts DROP COLUMN group_id;\nALTER TABLE alerts DROP COLUMN resolved_by"
    )
    drop_tables(["alert_groups"])
