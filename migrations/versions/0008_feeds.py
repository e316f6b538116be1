"""Feeds: topics beyond the merchant feed (the exchange desk, one exchange request), each with a
gapless seq.

``feed_heads`` holds each topic's last allocated seq; :func:`core.feeds.append` bumps it and
inserts the event in one statement, so the row stays locked until the appending transaction
ends and seq *n* committed means every seq below is committed. ``feed_events`` is every event
of those topics, replayed by the gateway on resume and after gaps. Merchant feeds stay on
``events``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

from migrations.sql import drop_tables

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# A topic key as core.feeds.Topic.key writes it; never a merchant's (those live in events).
_TOPIC = "CHECK (topic = 'desk' OR topic ~ '^request:.+$')"

STATEMENTS = [
    f"""
    CREATE TABLE feed_heads (
        topic text PRIMARY KEY {_TOPIC},
        last_seq bigint NOT NULL CHECK (last_seq > 0)
    )
    """,
    f"""
    CREATE TABLE feed_events (
        topic text NOT NULL {_TOPIC},
        seq bigint NOT NULL CHECK (seq > 0),
        event_id text NOT NULL,
        type text NOT NULL,
        data jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (topic, seq),
        UNIQUE (topic, event_id)
    )
    """,
    # core.feeds.publish_events reads a transition's events back by id, in every topic.
    "CREATE INDEX feed_events_by_event_id ON feed_events (event_id)",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    drop_tables(["feed_events", "feed_heads"])
