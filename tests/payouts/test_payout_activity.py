"""The payout transfer activity against the real provider sink: paid once per idempotency key
through Temporal's retries (transient failures, a timeout after the provider committed), a
refusal is final, and the provider's circuit breaker fails fast while it is open."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import asyncpg
import httpx
import pytest
from pydantic import ValidationError
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.payouts import PAYOUT_UNAVAILABLE, PayoutActivities
from core.contracts import (
    PAYOUT_REFUSED,
    PAYOUT_TRANSFER_ACTIVITY,
    PayoutTransferInput,
    PayoutTransferResult,
)
from core.settings import Settings
from devstack.payout_sink import PayoutSink
from devstack.ports import free_port
from tests.support import wait_for


@workflow.defn
class PayOut:
    """Stand-in for the escrow's release step: one transfer, retried by Temporal."""

    @workflow.run
    async def run(self, request: PayoutTransferInput) -> PayoutTransferResult:
        result: PayoutTransferResult = await workflow.execute_activity(
            PAYOUT_TRANSFER_ACTIVITY,
            request,
            result_type=PayoutTransferResult,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=50),
                backoff_coefficient=1.0,
                maximum_attempts=8,
            ),
        )
        return result


@pytest.fixture(autouse=True)
def calm_sink(payout_sink: PayoutSink) -> Iterator[None]:
    """No test leaves faults armed on the session's sink."""
    yield
    payout_sink.clear_faults()


@contextlib.asynccontextmanager
async def payout_worker(
    client: Client, settings: Settings, pool: asyncpg.Pool
) -> AsyncIterator[str]:
    """A real worker running the payout activity (and :class:`PayOut`); yields its task queue."""
    async with httpx.AsyncClient() as http:
        queue = f"pq-{uuid.uuid4().hex[:8]}"
        async with Worker(
            client,
            task_queue=queue,
            workflows=[PayOut],
            activities=[PayoutActivities(http, pool, settings).transfer],
            workflow_runner=UnsandboxedWorkflowRunner(),
        ):
            yield queue


def _request(account: str = "acct_winner", amount: int = 5000) -> PayoutTransferInput:
    escrow = uuid.uuid4().hex[:12]
    return PayoutTransferInput(
        idempotency_key=f"escrow:{escrow}:release",
        account=account,
        amount=amount,
        currency="EUR",
        reference=f"giveaway {escrow}",
    )


async def _pay(client: Client, queue: str, request: PayoutTransferInput) -> PayoutTransferResult:
    return await client.execute_workflow(
        PayOut.run, request, id=f"payout-{uuid.uuid4().hex}", task_queue=queue
    )


async def test_a_transfer_is_paid_and_returns_the_providers_id(
    temporal_client: Client, settings: Settings, pool: asyncpg.Pool, payout_sink: PayoutSink
) -> None:
    request = _request(account=f"acct_{uuid.uuid4().hex[:8]}")
    async with payout_worker(temporal_client, settings, pool) as queue:
        result = await _pay(temporal_client, queue, request)

    [transfer] = payout_sink.transfers(request.idempotency_key)
    assert result == PayoutTransferResult(transfer_id=transfer["id"], replayed=False)
    assert payout_sink.balance(request.account, "EUR") == 5000


async def test_transient_failures_are_retried_with_the_same_key_and_pay_once(
    temporal_client: Client, settings: Settings, pool: asyncpg.Pool, payout_sink: PayoutSink
) -> None:
    """Three 503s (nothing committed) then success: four calls, one key, one transfer."""
    request = _request(account=f"acct_{uuid.uuid4().hex[:8]}")
    payout_sink.fail_next(3)
    async with payout_worker(temporal_client, settings, pool) as queue:
        result = await _pay(temporal_client, queue, request)

    calls = payout_sink.calls(request.idempotency_key)
    assert [call["status"] for call in calls] == [503, 503, 503, 201]
    assert [t["id"] for t in payout_sink.transfers(request.idempotency_key)] == [result.transfer_id]
    assert payout_sink.balance(request.account, "EUR") == 5000


async def test_a_timeout_after_the_provider_committed_never_pays_twice(
    temporal_client: Client, settings: Settings, pool: asyncpg.Pool, payout_sink: PayoutSink
) -> None:
    """The provider commits and the answer never arrives in time; the retry with the same key
    gets the original transfer back (a replay), and the account was paid exactly once."""
    request = _request(account=f"acct_{uuid.uuid4().hex[:8]}")
    payout_sink.time_out_after_commit(times=1, hold_seconds=30)
    impatient = settings.model_copy(update={"payout_timeout_seconds": 0.5})
    async with payout_worker(temporal_client, impatient, pool) as queue:
        result = await _pay(temporal_client, queue, request)

    [transfer] = payout_sink.transfers(request.idempotency_key)
    assert result == PayoutTransferResult(transfer_id=transfer["id"], replayed=True)
    assert [c["status"] for c in payout_sink.calls(request.idempotency_key)] == [201, 200]
    assert payout_sink.balance(request.account, "EUR") == 5000


async def test_a_refusal_is_final_and_pays_nothing(
    temporal_client: Client, settings: Settings, pool: asyncpg.Pool, payout_sink: PayoutSink
) -> None:
    """A closed account fails the activity with PAYOUT_REFUSED, not retried, with the
    provider's reason; the provider paid nothing."""
    request = _request(account=f"acct_{uuid.uuid4().hex[:8]}")
    payout_sink.refuse(request.account)
    async with payout_worker(temporal_client, settings, pool) as queue:
        with pytest.raises(WorkflowFailureError) as failed:
            await _pay(temporal_client, queue, request)

    activity_error = failed.value.cause
    assert isinstance(activity_error, ActivityError)
    refusal = activity_error.cause
    assert isinstance(refusal, ApplicationError)
    assert (refusal.type, refusal.non_retryable) == (PAYOUT_REFUSED, True)
    assert refusal.details[0]["code"] == "account_closed"
    assert len(payout_sink.calls(request.idempotency_key)) == 1
    assert payout_sink.transfers(request.idempotency_key) == []
    assert payout_sink.balance(request.account, "EUR") == 0


async def test_the_breaker_opens_fails_fast_and_closes_after_a_good_probe(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Two failures open the provider's circuit; the next call fails fast (retryably) without
    reaching the provider; once the open period ends, one probe goes through and closes it."""
    with PayoutSink(free_port()) as provider:
        isolated = settings.model_copy(
            update={
                "payout_base_url": provider.url,
                "circuit_failure_threshold": 2,
                "circuit_cooldown_seconds": 1.0,
            }
        )
        provider.fail_next(2)
        async with httpx.AsyncClient() as http:
            transfer = PayoutActivities(http, pool, isolated).transfer
            env = ActivityEnvironment()
            for _ in range(2):
                with pytest.raises(ApplicationError) as failure:
                    await env.run(transfer, _request())
                assert (failure.value.type, failure.value.non_retryable) == (
                    PAYOUT_UNAVAILABLE,
                    False,
                )

            with pytest.raises(ApplicationError) as fast:
                await env.run(transfer, _request())
            assert fast.value.type == PAYOUT_UNAVAILABLE and "circuit is open" in fast.value.message
            assert fast.value.next_retry_delay is not None
            assert len(provider.calls()) == 2

            async def open_period_over() -> bool:
                return bool(
                    await pool.fetchval(
                        "SELECT circuit_open_until <= clock_timestamp() FROM providers"
                        " WHERE base_url = $1",
                        provider.url,
                    )
                )

            await wait_for(open_period_over, timeout=10, what="the open period to end")
            request = _request()
            result = await env.run(transfer, request)

        assert result.transfer_id == provider.transfers(request.idempotency_key)[0]["id"]
        row = await pool.fetchrow(
            "SELECT consecutive_failures, circuit_open_until FROM providers WHERE base_url = $1",
            provider.url,
        )
        assert row is not None
        assert (row["consecutive_failures"], row["circuit_open_until"]) == (0, None)


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        ({"payout_base_url": "http://127.0.0.1:58028"}, "SWITCHBOARD_PAYOUT_BASE_URL"),
        ({"payout_api_key": "sk_dev_payout_sink"}, "SWITCHBOARD_PAYOUT_API_KEY"),
    ],
)
def test_production_refuses_the_payout_sink(overrides: dict[str, str], refused: str) -> None:
    real = {
        "environment": "production",
        "admin_api_key": "sb_" + "k" * 40,
        "dashboard_token_secret": "d" * 48,
        "slack_base_url": "https://slack.com/api/",
        "slack_bot_token": "xoxb-real",
        "slack_signing_secret": "s" * 32,
        "pagerduty_base_url": "https://events.pagerduty.com",
        "pagerduty_routing_key": "r" * 32,
        "payout_base_url": "https://payouts.example.com",
        "payout_api_key": "sk_live_real",
    }
    assert Settings(_env_file=None, **real).payout_base_url == "https://payouts.example.com"  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=refused):
        Settings(_env_file=None, **{**real, **overrides})  # type: ignore[arg-type]
