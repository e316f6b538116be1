"""An escrow whose outcome comes later than the api waits for is answered 202 with its URL, never
a 5xx (issue 9: "never a 5xx for a slow engine"), for a create and for a release alike."""

from __future__ import annotations

import uuid

import asyncpg
import httpx
from redis.asyncio import Redis
from temporalio.client import Client

from core.contracts import escrow_workflow_id
from core.settings import Settings
from devstack.payout_sink import PayoutSink
from tests.escrow.support import ADMIN, assert_history, escrow_body, keyed, wallets
from tests.support import running_api, running_worker, wait_for

WAIT_SECONDS = 0.2
"""The api's wait for an outcome, shorter than any outcome below can take."""


async def test_an_outcome_later_than_the_wait_is_a_202_not_a_5xx(
    settings: Settings,
    temporal_client: Client,
    pool: asyncpg.Pool,
    redis: Redis,
    payout_sink: PayoutSink,
) -> None:
    impatient = settings.model_copy(update={"escrow_wait_seconds": WAIT_SECONDS})
    account = f"acct_{uuid.uuid4().hex[:8]}"
    async with (
        running_api(impatient) as api_url,
        httpx.AsyncClient(base_url=api_url, timeout=30) as http,
    ):
        merchant, (source,) = await wallets(http, pool, [40])
        body = escrow_body(merchant, [(source, 40)], account=account)
        # No worker yet: the saga cannot answer within the wait.
        created = await http.post("/v1/escrows", json=body, headers=keyed())
        assert created.status_code == 202, created.text
        escrow_id = created.json()["id"]
        assert created.headers["location"] == f"/v1/escrows/{escrow_id}"
        assert created.json()["status"] in ("created", "funding")

        async def status() -> str:
            shown = await http.get(f"/v1/escrows/{escrow_id}", headers=ADMIN)
            assert shown.status_code == 200, shown.text
            answer: str = shown.json()["status"]
            return answer

        async def reached(wanted: str) -> bool:
            return await status() == wanted

        async with running_worker(settings, temporal_client, pool, redis):
            await wait_for(lambda: reached("funded"), what="the escrow to be funded")
            # Two 503s: the transfer is retried a second later, long after the wait.
            payout_sink.fail_next(2)
            released = await http.post(f"/v1/escrows/{escrow_id}/release", json={}, headers=keyed())
            assert released.status_code == 202, released.text
            assert released.json()["status"] in ("funded", "releasing")
            await wait_for(lambda: reached("released"), what="the escrow to be released")
    assert len(payout_sink.transfers(f"escrow:{escrow_id}:release")) == 1
    await assert_history(pool, escrow_id, ["created", "funding", "funded", "releasing", "released"])


async def test_a_repeat_of_a_release_the_workflow_already_took_attaches_to_it(
    settings: Settings, temporal_client: Client, pool: asyncpg.Pool, redis: Redis
) -> None:
    """Every repeat of a release's key hands the order to the workflow again (the first may
    have timed out after the workflow took it: a 503). A repeat after the release is done, its
    workflow ended, finds that release by the key's update id and answers it, not a 409; a
    release under another key is a 409."""
    async with (
        running_api(settings) as api_url,
        httpx.AsyncClient(base_url=api_url, timeout=30) as http,
        running_worker(settings, temporal_client, pool, redis),
    ):
        merchant, (source, beneficiary) = await wallets(http, pool, [25, 0])
        body = escrow_body(merchant, [(source, 25)], wallet=beneficiary)
        created = await http.post("/v1/escrows", json=body, headers=keyed())
        assert created.status_code == 201, created.text
        escrow_id = created.json()["id"]
        key = str(uuid.uuid4())
        first = await http.post(f"/v1/escrows/{escrow_id}/release", json={}, headers=keyed(key))
        assert first.status_code == 200, first.text
        assert first.json()["status"] == "released"
        described = await temporal_client.get_workflow_handle(
            escrow_workflow_id(escrow_id)
        ).describe()
        assert described.status is not None and described.status.name == "COMPLETED"

        repeat = await http.post(f"/v1/escrows/{escrow_id}/release", json={}, headers=keyed(key))
        assert repeat.status_code == 200, repeat.text
        assert repeat.json()["status"] == "released"
        assert repeat.headers.get("idempotent-replayed") == "true"
        other = await http.post(f"/v1/escrows/{escrow_id}/release", json={}, headers=keyed())
        assert other.status_code == 409, other.text
    await assert_history(pool, escrow_id, ["created", "funding", "funded", "releasing", "released"])
