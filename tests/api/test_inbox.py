"""The group-committing inbox writer, against the real Postgres."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from api.inbox import Inbox, InboxEntry, Recorded, new_event_id
from core.errors import MalformedEnvelope
from tests.support import Partner


def entry(partner: Partner, payload_json: str) -> InboxEntry:
    return InboxEntry(
        event_id=new_event_id(),
        partner_id=partner.id,
        webhook_id=f"msg_{uuid.uuid4().hex}",
        body=payload_json.encode(),
        event_type="partner.custom",
        entity_key=None,
        merchant_id=None,
        priority=5,
        payload_json=payload_json,
        received_at=datetime.now(UTC),
    )


async def test_one_unstorable_row_does_not_fail_its_batch(
    pool: asyncpg.Pool, partner: Partner
) -> None:
    """Rows written in the same batch as one Postgres refuses are still recorded."""
    inbox = Inbox(pool)
    try:
        good = [entry(partner, '{"type": "partner.custom", "data": {}}') for _ in range(5)]
        bad = entry(partner, '{"type": "partner.custom", "data": {"v": Infinity}}')
        results = await asyncio.gather(
            *(inbox.record(e) for e in [*good[:2], bad, *good[2:]]), return_exceptions=True
        )
    finally:
        await inbox.close()
    assert isinstance(results[2], MalformedEnvelope)
    recorded = [r for r in results if isinstance(r, Recorded)]
    assert len(recorded) == 5
    stored = await pool.fetchval("SELECT count(*) FROM webhooks WHERE partner_id = $1", partner.id)
    assert stored == 5


@pytest.mark.parametrize("burst", [1, 200])
async def test_every_caller_gets_its_own_event(
    pool: asyncpg.Pool, partner: Partner, burst: int
) -> None:
    """A lone webhook and a burst of 200 each come back with distinct, new event ids."""
    inbox = Inbox(pool, batch_max=50)
    try:
        entries = [entry(partner, '{"type": "partner.custom", "data": {}}') for _ in range(burst)]
        results = await asyncio.gather(*(inbox.record(e) for e in entries))
    finally:
        await inbox.close()
    assert [r.event_id for r in results] == [e.event_id for e in entries]
    assert not any(r.duplicate for r in results)
