"""Composition root of the durable side: the Temporal workers plus the inbox, delivery and alert
relays.

Reads settings, connects Temporal, Postgres and Redis, builds the activity objects with their
clients injected, lists the workflows and activities explicitly, and runs until SIGTERM/SIGINT.
Webhook workflows (money) and delivery lanes (outbound webhooks and email) poll separate task
queues with separate slots, so money never waits behind outbound traffic.
``python worker.py`` and ``switchboard worker`` both land in :func:`main`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta

import asyncpg
import httpx
import uvloop
from prometheus_client import start_http_server
from redis.asyncio import Redis
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
)
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import PollerBehaviorSimpleMaximum, UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.deliveries import DeliveryActivities
from activities.email import Mailer
from activities.escrow import EscrowActivities
from activities.exchange import ExchangeActivities
from activities.ledger import LedgerActivities
from activities.monitor import HealthActivities
from activities.notify import NotifyActivities, PagerDuty, Slack
from activities.payouts import PayoutActivities
from activities.publish import PublishActivities
from core.alert_policy import RoutingPolicy, load_policy
from core.db import connect_pool
from core.egress import parse_allow_list, vetted_connection_pool
from core.logs import configure_logging
from core.realtime import connect_redis
from core.settings import Settings
from relays.alerts import AlertRelay
from relays.deliveries import DeliveryRelay
from relays.inbox import InboxRelay
from relays.workflow_starts import WorkflowStartRelay
from workflows.delivery import DeliveryLaneWorkflow
from workflows.escalation import EscalationWorkflow
from workflows.escrow import EscrowWorkflow
from workflows.exchange import ExchangeRequestWorkflow
from workflows.monitor import HealthMonitorWorkflow
from workflows.webhook import WebhookWorkflow

__all__ = [
    "WORKFLOWS",
    "build_delivery_worker",
    "build_exchange_worker",
    "build_oncall_worker",
    "build_worker",
    "ensure_monitor_schedule",
    "main",
    "running_workers",
    "serve",
]

WORKFLOWS = [
    WebhookWorkflow,
    DeliveryLaneWorkflow,
    EscalationWorkflow,
    HealthMonitorWorkflow,
    ExchangeRequestWorkflow,
    EscrowWorkflow,
]
log = logging.getLogger("switchboard.worker")

MONEY_WORKFLOW_POLLS = PollerBehaviorSimpleMaximum(maximum=40)
MONEY_NONSTICKY_POLL_RATIO = 0.5
"""Workflow task polls of the money worker. The SDK's 5, a fifth of them on the task queue
itself, leave one poll for every new workflow's first task: a burst of escrows waited seconds
for it (schedule-to-start) while the worker idled. Half of 40 on each queue keeps up."""


def build_worker(
    client: Client,
    settings: Settings,
    pool: asyncpg.Pool,
    redis: Redis,
    stack: AsyncExitStack,
) -> Worker:
    """The Temporal worker for money (webhook and escrow workflows), with every activity's
    clients injected; its HTTP client (the payout provider's) closes with ``stack``."""
    ledger = LedgerActivities(pool)
    publish = PublishActivities(pool, redis)
    escrows = EscrowActivities(pool, redis)
    payout_http = httpx.AsyncClient(timeout=settings.payout_timeout_seconds)
    stack.push_async_callback(payout_http.aclose)
    payouts = PayoutActivities(payout_http, pool, settings)
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[WebhookWorkflow, EscrowWorkflow],
        workflow_runner=_runner(settings),
        activities=[
            ledger.apply_event,
            ledger.park_event,
            publish.publish_event,
            escrows.move_escrow,
            escrows.debit_escrow_source,
            escrows.return_escrow_source,
            escrows.release_escrow,
            escrows.refund_escrow,
            escrows.escrow_alert,
            payouts.transfer,
        ],
        max_concurrent_workflow_tasks=settings.relay_max_in_flight,
        max_concurrent_local_activities=settings.relay_max_in_flight,
        workflow_task_poller_behavior=MONEY_WORKFLOW_POLLS,
        nonsticky_to_sticky_poll_ratio=MONEY_NONSTICKY_POLL_RATIO,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


def build_delivery_worker(
    client: Client, settings: Settings, pool: asyncpg.Pool, stack: AsyncExitStack
) -> Worker:
    """The Temporal worker for delivery lanes; its HTTP pool closes with ``stack``."""
    http = vetted_connection_pool(
        allow=parse_allow_list(settings.delivery_allow_networks),
        max_connections=settings.delivery_max_in_flight,
    )
    stack.push_async_callback(http.aclose)
    mailer = Mailer(
        settings.smtp_host, settings.smtp_port, settings.smtp_sender, settings.smtp_timeout_seconds
    )
    deliveries = DeliveryActivities(pool, http, mailer, settings)
    return Worker(
        client,
        task_queue=settings.delivery_task_queue,
        workflows=[DeliveryLaneWorkflow],
        workflow_runner=_runner(settings),
        activities=[deliveries.attempt_delivery],
        max_concurrent_workflow_tasks=settings.delivery_max_in_flight,
        max_concurrent_local_activities=settings.delivery_max_in_flight,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


def build_oncall_worker(
    client: Client,
    settings: Settings,
    pool: asyncpg.Pool,
    policy: RoutingPolicy,
    stack: AsyncExitStack,
) -> Worker:
    """The Temporal worker for alert escalations and the health monitor, on a task queue of
    their own so that a webhook backlog they report on never delays them; its clients close
    with ``stack``."""
    pagerduty_client = PagerDuty(settings)
    stack.callback(pagerduty_client.close)
    notify = NotifyActivities(pool, Slack(settings), pagerduty_client, policy, settings)
    health = HealthActivities(pool, client, settings)
    return Worker(
        client,
        task_queue=settings.oncall_task_queue,
        workflows=[EscalationWorkflow, HealthMonitorWorkflow],
        workflow_runner=_runner(settings),
        activities=[notify.notify, health.check],
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


def build_exchange_worker(
    client: Client, settings: Settings, pool: asyncpg.Pool, redis: Redis
) -> Worker:
    """The Temporal worker for exchange request workflows (SLA timers, customer emails,
    analytics), on a task queue of its own so a webhook backlog never delays a desk timer."""
    exchange = ExchangeActivities(pool, redis)
    return Worker(
        client,
        task_queue=settings.exchange_task_queue,
        workflows=[ExchangeRequestWorkflow],
        workflow_runner=_runner(settings),
        activities=[
            exchange.look_up,
            exchange.check_pending_sla,
            exchange.resolve_pending_sla,
            exchange.release_idle,
            exchange.notify_customer,
            exchange.record_analytics,
        ],
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


async def ensure_monitor_schedule(client: Client, settings: Settings) -> None:
    """Create (or bring up to date) the Temporal Schedule that runs the health monitor."""
    schedule_id = f"health-monitor:{settings.oncall_task_queue}"
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            HealthMonitorWorkflow.run,
            id=schedule_id,
            task_queue=settings.oncall_task_queue,
        ),
        spec=ScheduleSpec(
            intervals=[
                ScheduleIntervalSpec(every=timedelta(seconds=settings.monitor_interval_seconds))
            ]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(schedule_id, schedule)
    except ScheduleAlreadyRunningError:
        await client.get_schedule_handle(schedule_id).update(
            lambda _: ScheduleUpdate(schedule=schedule)
        )


def _runner(settings: Settings) -> SandboxedWorkflowRunner | UnsandboxedWorkflowRunner:
    # Determinism is enforced where it is cheap: the test suite runs workflows sandboxed and the
    # replay test replays committed histories in the sandbox. Production skips the per-run cost.
    return SandboxedWorkflowRunner() if settings.workflow_sandbox else UnsandboxedWorkflowRunner()


@contextlib.asynccontextmanager
async def running_workers(
    client: Client, settings: Settings, pool: asyncpg.Pool, redis: Redis, *, relays: bool = True
) -> AsyncIterator[None]:
    """Both Temporal workers and (by default) the relays, until the block exits.

    The on-call policy is read first: a broken ``core/alerting.yaml`` stops the worker at start,
    naming the line (:class:`core.alert_policy.PolicyError`).
    """
    policy = load_policy(settings.alerting_policy)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(build_worker(client, settings, pool, redis, stack))
        await stack.enter_async_context(build_delivery_worker(client, settings, pool, stack))
        await stack.enter_async_context(build_oncall_worker(client, settings, pool, policy, stack))
        await stack.enter_async_context(build_exchange_worker(client, settings, pool, redis))
        if settings.monitor_schedule:
            await ensure_monitor_schedule(client, settings)
        if relays:
            for relay in (
                InboxRelay(pool, client, settings),
                DeliveryRelay(pool, client, settings),
                AlertRelay(pool, client, settings, policy),
                WorkflowStartRelay(pool, client, settings),
            ):
                task = asyncio.create_task(relay.run(), name=type(relay).__name__)
                stack.push_async_callback(_cancel, task)
        yield


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def connect_temporal(settings: Settings, runtime: Runtime | None = None) -> Client:
    """A Temporal client for this process (one per process: clients are not fork-safe)."""
    return await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, runtime=runtime
    )


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run worker and relay until ``stop`` is set."""
    runtime = Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=f"{settings.metrics_host}:{settings.worker_sdk_metrics_port}"
            )
        )
    )
    client = await connect_temporal(settings, runtime)
    async with AsyncExitStack() as stack:
        pool = await connect_pool(settings.database_url, size=settings.database_pool_size)
        stack.push_async_callback(pool.close)
        redis = connect_redis(settings.redis_url)
        stack.push_async_callback(redis.aclose)
        async with running_workers(client, settings, pool, redis):
            log.info(
                "worker ready on task queues %s and %s",
                settings.task_queue,
                settings.delivery_task_queue,
            )
            await stop.wait()


async def _main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    start_http_server(settings.worker_metrics_port, addr=settings.metrics_host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(settings, stop)


def main() -> None:
    """Entry point of ``python worker.py`` and ``switchboard worker``."""
    # uvloop, as the api and the gateway serve: the worker's loop carries every activity's
    # Postgres and Redis traffic and the SDK's wake-ups, and spent ~40 % of its CPU in
    # asyncio's own Python code under a burst of escrows.
    uvloop.run(_main())


if __name__ == "__main__":
    main()
