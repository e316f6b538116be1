"""Every status change delivery rows really make is one ``DELIVERY_TRANSITIONS`` draws, and so is
every delivery transition in the audit log and every success in the attempt log.

A trigger in the test's own database records each status change as it is written (the audit log
keeps parking, cancelling and replays; the attempt log keeps successes), while the real api,
relays, lanes and a stub merchant take deliveries down each path: delivered at once, exhausted
then replayed and delivered, 410 Gone (the endpoint disabled, its notice mailed, and the next
event's delivery planned as a dead letter), and held by a paused endpoint that is then deleted.
"""

from __future__ import annotations

import inspect
import uuid
from itertools import pairwise

import asyncpg
import pytest
from temporalio.client import Client

from core.contracts import DELIVERY_TRANSITIONS, DeliveryStatus
from core.errors import IllegalTransition
from core.settings import Settings
from devstack.mailsink import MailSink
from tests.outbound.stub import Answer
from tests.outbound.support import deliveries_of, wait_delivery_status
from tests.outbound.test_deliveries import pay
from tests.outbound.test_endpoint_health import ADMIN, register, stack
from tests.support import record_status_changes, status_histories, wait_for

PENDING, SUCCEEDED = DeliveryStatus.PENDING, DeliveryStatus.SUCCEEDED
DEAD_LETTERED, CANCELLED = DeliveryStatus.DEAD_LETTERED, DeliveryStatus.CANCELLED


def test_the_enum_docstring_draws_the_table() -> None:
    """``DeliveryStatus``'s docstring shows exactly what ``DELIVERY_TRANSITIONS`` allows."""
    assert DELIVERY_TRANSITIONS.drawing() in inspect.cleandoc(DeliveryStatus.__doc__ or "")


def test_settled_deliveries_move_only_by_replay() -> None:
    """Succeeded and cancelled are final; a dead letter goes back only to ``pending``."""
    assert DELIVERY_TRANSITIONS.final == {SUCCEEDED, CANCELLED}
    assert DELIVERY_TRANSITIONS.successors(DEAD_LETTERED) == {PENDING}
    assert DELIVERY_TRANSITIONS.predecessors(DEAD_LETTERED) == {PENDING}
    with pytest.raises(IllegalTransition):
        DELIVERY_TRANSITIONS.check(SUCCEEDED, PENDING)


def test_the_api_spells_the_same_statuses() -> None:
    """The deliveries API's status filter and schema list exactly the enum's values."""
    from typing import get_args

    from api.deliveries import DeliveryStatusParam
    from api.schemas import DeliveryOut

    assert set(get_args(DeliveryStatusParam)) == set(DeliveryStatus)
    assert set(get_args(DeliveryOut.model_fields["status"].annotation)) == set(DeliveryStatus)


async def test_every_delivery_transition_is_drawn(
    settings: Settings, postgres_admin_url: str, temporal_client: Client, mail_sink: MailSink
) -> None:
    """Each row's recorded history starts at creation, chains, and uses only drawn moves; the
    audit and attempt logs agree; and every drawn move was made."""
    async with stack(
        settings, postgres_admin_url, temporal_client, delivery_retry_schedule=[0, 0.1, 0.1]
    ) as (pool, http, partner, stub):
        await record_status_changes(pool, "deliveries", "id")
        owner = f"owner-{uuid.uuid4().hex[:8]}@merchant.example"
        await http.post("/v1/merchants", json={"id": "m-gone", "email": owner}, headers=ADMIN)
        for merchant in ("m-ok", "m-flaky", "m-gone", "m-held"):
            await register(http, stub, merchant, f"/{merchant}")
        held = await register(http, stub, "m-held", "/m-held-too")
        stub.script("/m-flaky", *[Answer(503)] * 3)
        stub.script("/m-gone", Answer(410))
        response = await http.post(f"/v1/endpoints/{held}/pause", headers=ADMIN)
        assert response.status_code == 200, response.text

        delivered = await pay(partner, "m-ok", "pay_ok")
        flaky = await pay(partner, "m-flaky", "pay_flaky")
        gone = await pay(partner, "m-gone", "pay_gone")
        await wait_delivery_status(pool, delivered, SUCCEEDED)
        dead = await wait_delivery_status(pool, flaky, DEAD_LETTERED)
        await wait_delivery_status(pool, gone, DEAD_LETTERED)
        replay = await http.post(f"/v1/deliveries/{dead['id']}/replay", headers=ADMIN)
        assert replay.status_code == 200, replay.text
        await wait_delivery_status(pool, flaky, SUCCEEDED)
        after_gone = await pay(partner, "m-gone", "pay_after_gone")
        await wait_delivery_status(pool, after_gone, DEAD_LETTERED)

        held_event = await pay(partner, "m-held", "pay_held")
        # The held merchant's other endpoint delivers, so the ledger has planned both.
        await wait_for(
            lambda: _statuses_are(pool, held_event, {PENDING, SUCCEEDED}),
            what="the held merchant's deliveries",
        )
        assert (await http.delete(f"/v1/endpoints/{held}", headers=ADMIN)).status_code == 204
        await wait_for(
            lambda: _statuses_are(pool, held_event, {SUCCEEDED, CANCELLED}),
            what="the deleted endpoint's delivery to be cancelled",
        )
        await wait_for(
            lambda: pool.fetchval(
                "SELECT bool_and(status = 'succeeded') FROM deliveries WHERE channel = 'email'"
            ),
            what="the disable notice to be mailed",
        )

        histories = await status_histories(pool, "deliveries")
        seen: set[tuple[str | None, str]] = set()
        for delivery_id, history in histories.items():
            created, *moves = history
            assert created[0] is None, (delivery_id, history)
            if created[1] == DEAD_LETTERED:
                # Planned for a disabled endpoint: pending and parked in one statement.
                moves = [(PENDING, DEAD_LETTERED), *moves]
                created = (None, PENDING)
            for (_, before), (source, _) in pairwise([created, *moves]):
                assert before == source, (delivery_id, history)
            for move in (created, *moves):
                assert DELIVERY_TRANSITIONS.allows(*move), (delivery_id, move)
                seen.add(move)
        assert seen == set(DELIVERY_TRANSITIONS), "every drawn move was exercised"

        audited = await pool.fetch(
            "SELECT entity_id, from_state, to_state FROM audit_log"
            " WHERE entity_type = $1 ORDER BY id",
            DELIVERY_TRANSITIONS.entity,
        )
        assert audited, "parking, cancelling and replays are audited"
        for row in audited:
            move = (row["from_state"], row["to_state"])
            assert DELIVERY_TRANSITIONS.allows(*move), (row["entity_id"], move)
            assert move in histories[row["entity_id"]], (row["entity_id"], move)
        succeeded = await pool.fetch(
            "SELECT DISTINCT delivery_id FROM delivery_attempts WHERE outcome = 'delivered'"
        )
        for row in succeeded:
            assert (PENDING, SUCCEEDED) in histories[row["delivery_id"]], row["delivery_id"]
        assert len(succeeded) == sum((PENDING, SUCCEEDED) in h for h in histories.values())
        assert {r["status"] for r in await deliveries_of(pool, delivered)} == {SUCCEEDED}


async def _statuses_are(pool: asyncpg.Pool, event_id: str, statuses: set[str]) -> bool:
    """Whether the event's deliveries have exactly these statuses, one each."""
    rows = await deliveries_of(pool, event_id)
    return sorted(row["status"] for row in rows) == sorted(statuses)
