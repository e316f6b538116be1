"""Composition root of the durable side: the Temporal worker plus the inbox relay.

Reads settings, connects Temporal, Postgres and Redis, builds the activity objects with their
clients injected, lists the workflows and activities explicitly, and runs until SIGTERM/SIGINT.
``python worker.py`` and ``switchboard worker`` both land in :func:`main`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from contextlib import AsyncExitStack
from datetime import timedelta

import asyncpg
from prometheus_client import start_http_server
from redis.asyncio import Redis
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.ledger import LedgerActivities
from activities.publish import PublishActivities
from core.db import connect_pool
from core.logs import configure_logging
from core.realtime import connect_redis
from core.settings import Settings
from relay import InboxRelay
from workflows.webhook import WebhookWorkflow

__all__ = ["WORKFLOWS", "build_worker", "main", "serve"]

WORKFLOWS = [WebhookWorkflow]
log = logging.getLogger("switchboard.worker")


def build_worker(client: Client, settings: Settings, pool: asyncpg.Pool, redis: Redis) -> Worker:
    """The Temporal worker for webhook workflows, with every activity's clients injected."""
    ledger = LedgerActivities(pool)
    publish = PublishActivities(pool, redis)
    # Determinism is enforced where it is cheap: the test suite runs workflows sandboxed and the
    # replay test replays committed histories in the sandbox. Production skips the per-run cost.
    runner = SandboxedWorkflowRunner() if settings.workflow_sandbox else UnsandboxedWorkflowRunner()
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        workflow_runner=runner,
        activities=[ledger.apply_event, ledger.park_event, publish.publish_event],
        max_concurrent_workflow_tasks=settings.relay_max_in_flight,
        max_concurrent_local_activities=settings.relay_max_in_flight,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


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
        worker = build_worker(client, settings, pool, redis)
        relay = InboxRelay(pool, client, settings)
        async with worker:
            relay_task = asyncio.create_task(relay.run(), name="relay")
            log.info("worker ready on task queue %s", settings.task_queue)
            await stop.wait()
            relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay_task


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
    asyncio.run(_main())


if __name__ == "__main__":
    main()
