"""The full outbound retry schedule to exhaustion, on virtual time (RELIABILITY.md W6).

A stub merchant fails every attempt; the lane retries after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h
and 10 h (±20 % jitter), about 27.6 hours in all, then dead-letters the delivery and alerts.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from core.settings import Settings
from tests.outbound.stub import Answer, StubMerchant
from tests.support import time_skipping_stack, wait_for

ADMIN = {"authorization": "Bearer sb_dev_admin_key"}
DESIGN_SCHEDULE = [0, 5, 300, 1800, 7200, 18000, 36000, 36000]


async def test_a_failing_delivery_follows_the_schedule_to_exhaustion(
    time_skipping: WorkflowEnvironment, postgres_admin_url: str, settings: Settings
) -> None:
    assert Settings.model_fields["delivery_retry_schedule"].default == DESIGN_SCHEDULE
    async with (
        StubMerchant().running() as stub,
        time_skipping_stack(
            time_skipping,
            postgres_admin_url,
            settings,
            delivery_retry_schedule=DESIGN_SCHEDULE,
            delivery_task_queue=f"dq-{uuid.uuid4().hex[:8]}",
            # The breaker compares with the database clock, which virtual time does not move.
            circuit_failure_threshold=100,
        ) as (pool, http, partner),
    ):
        stub.script("/down", *[Answer(500)] * len(DESIGN_SCHEDULE))
        merchant = f"m-{uuid.uuid4().hex[:8]}"
        created = await http.post(
            "/v1/endpoints",
            json={"merchant_id": merchant, "url": f"{stub.url}/down"},
            headers=ADMIN,
        )
        assert created.status_code == 201, created.text
        event_id = await partner.send(
            "payment.succeeded",
            payment_id="pay_sched",
            merchant_id=merchant,
            amount=500,
            currency="EUR",
        )
        delivery = await wait_for(
            lambda: pool.fetchrow("SELECT id FROM deliveries WHERE event_id = $1", event_id),
            what="the delivery to be planned",
        )
        for attempt, delay in enumerate([*DESIGN_SCHEDULE[1:], 0], start=1):

            async def made(n: int = attempt) -> bool:
                reached: bool = await pool.fetchval(
                    "SELECT count(*) >= $2 FROM delivery_attempts WHERE delivery_id = $1",
                    delivery["id"],
                    n,
                )
                return reached

            await wait_for(made, what=f"attempt {attempt}")
            # Virtual time: move past the longest jittered delay before the next attempt.
            await time_skipping.sleep(timedelta(seconds=delay * 1.2 + 1))
        await wait_for(
            lambda: pool.fetchval(
                "SELECT status = 'dead_lettered' FROM deliveries WHERE id = $1", delivery["id"]
            ),
            what="the delivery to be dead-lettered",
        )

        attempts = await pool.fetch(
            "SELECT attempt, scheduled_at, status_code FROM delivery_attempts"
            " WHERE delivery_id = $1 ORDER BY attempt",
            delivery["id"],
        )
        assert [a["attempt"] for a in attempts] == list(range(1, len(DESIGN_SCHEDULE) + 1))
        assert {a["status_code"] for a in attempts} == {500}
        gaps = [
            (later["scheduled_at"] - earlier["scheduled_at"]).total_seconds()
            for earlier, later in itertools.pairwise(attempts)
        ]
        for gap, planned in zip(gaps, DESIGN_SCHEDULE[1:], strict=True):
            assert planned * 0.8 - 1 <= gap <= planned * 1.2 + 1, (gap, planned)
        total = timedelta(seconds=sum(gaps))
        assert timedelta(hours=22) <= total <= timedelta(hours=34)
        status = await pool.fetchval("SELECT status FROM deliveries WHERE id = $1", delivery["id"])
        assert status == "dead_lettered"
        assert len(stub.at("/down")) == len(DESIGN_SCHEDULE)
        kinds = {row["kind"] for row in await pool.fetch("SELECT kind FROM alerts")}
        assert {"endpoint_failing", "delivery_exhausted"} <= kinds


pytestmark = pytest.mark.timeout(120)
