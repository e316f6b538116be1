"""The api process: ``create_app(settings)`` builds FastAPI with ingress, operator API and docs.

The lifespan opens the Postgres pool and the Redis client once, builds the ingress's parts, and
keeps them on ``app.state``; ``switchboard api`` serves it with uvicorn.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from temporalio.client import Client

from api import alerts, dashboard, deliveries, desk, escrows, exchange, ingress, operator, wallets
from api.escrow_moves import EscrowMoves
from api.inbox import Inbox
from api.limits import GuardedHttpToolsProtocol, RequestLimits
from api.partners import PartnerDirectory
from api.problems import ANY_REQUEST, install_problem_handlers, problems
from api.ratelimit import RateLimiter
from core.db import DATABASE_UNREACHABLE, connect_pool, within
from core.errors import Unavailable
from core.exchange_workflow import ExchangeWorkflows
from core.logs import configure_logging
from core.realtime import connect_redis
from core.replica import ReadPool
from core.settings import Settings

__all__ = ["SERVER_OPTIONS", "create_app", "create_app_from_environment", "server_options"]

# How uvicorn serves the api (and the benchmark's bare baseline app, so they compare fairly):
# no WebSocket support, uvloop and httptools, our own JSON logging.
SERVER_OPTIONS: dict[str, Any] = {
    "log_config": None,
    "ws": "none",
    "loop": "uvloop",
    "http": "httptools",
    "timeout_graceful_shutdown": 10,
}
HEALTH_TIMEOUT = 0.5
"""Longest /healthz waits on Postgres, so a balancer's probe gets an answer within a second."""

DESCRIPTION = """
Switchboard's partner ingress and operator API.

* **Partners** POST Standard Webhooks signed events to `/webhooks/{partner_id}`.
* **Operators** authenticate with `Authorization: Bearer <API key>` and trace webhooks,
  list events and alerts, replay dead letters, and manage partners and merchants under `/v1`.

Errors are RFC 9457 `application/problem+json`.
"""


def server_options(settings: Settings) -> dict[str, Any]:
    """How ``switchboard api`` serves: :data:`SERVER_OPTIONS` with the limits of
    :mod:`api.limits` (connections, request head size and time, keep-alive).

    The protocol is a ``functools.partial`` of a module-level class, so it pickles into the
    worker processes of ``SWITCHBOARD_API_WORKERS > 1``.
    """
    return {
        **SERVER_OPTIONS,
        "http": functools.partial(
            GuardedHttpToolsProtocol,
            header_timeout=settings.header_timeout_seconds,
            max_header_bytes=settings.max_header_bytes,
        ),
        "limit_concurrency": settings.api_max_connections,
        "timeout_keep_alive": settings.keep_alive_seconds,
    }


def create_app_from_environment() -> FastAPI:
    """The app for the settings in the environment (uvicorn's factory in each worker process)."""
    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)


def create_app(settings: Settings) -> FastAPI:
    """The api's ASGI app; nothing connects until the lifespan starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await connect_pool(
            settings.database_url,
            size=settings.database_pool_size,
            timeout=settings.database_timeout_seconds,
        )
        # Connects on first use: a replica that is down stops only the reads it serves.
        read_pool = (
            await connect_pool(
                settings.database_read_url,
                size=settings.database_pool_size,
                timeout=settings.database_timeout_seconds,
                read_only=True,
            )
            if settings.database_read_url
            else None
        )
        # The rate limiter fails open, so a slow Redis must not hold acknowledgements for long.
        redis = connect_redis(settings.redis_url, timeout=0.5)
        inbox = Inbox(
            pool, batch_max=settings.inbox_batch_max, timeout=settings.database_timeout_seconds
        )
        app.state.settings = settings
        app.state.pool = pool
        app.state.reads = ReadPool(read_pool or pool, replica=read_pool is not None)
        app.state.redis = redis
        # Only on-call actions (acknowledge, resolve) and exchange requests' workflows (in the
        # background, after commit) talk to Temporal; connecting lazily keeps the api
        # independent of it for everything else.
        app.state.temporal = await Client.connect(
            settings.temporal_address, namespace=settings.temporal_namespace, lazy=True
        )
        app.state.exchange_workflows = ExchangeWorkflows(app.state.temporal, pool, settings)
        app.state.escrow_moves = EscrowMoves(settings.database_url)
        app.state.ingress = ingress.Ingress(
            settings=settings,
            partners=PartnerDirectory(pool),
            inbox=inbox,
            limiter=RateLimiter(redis),
        )
        app.state.exchange_limiter = RateLimiter(redis, prefix="switchboard:rl:exchange")
        # Everything built so far (modules, the app, its schemas) lives as long as the process:
        # freezing it keeps the collector's full passes from walking it. Unfrozen, each pass
        # stalled every request in flight for ~70 ms, every ~5 s at 200 claims/s
        # (benchmarks/claims.py: p99 100 ms, frozen 60 ms).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await app.state.exchange_workflows.close()
            await app.state.escrow_moves.close()
            await inbox.close()
            await redis.aclose()
            await pool.close()
            if read_pool is not None:
                await read_pool.close()

    app = FastAPI(
        title="Switchboard",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    app.add_middleware(RequestLimits, settings=settings)
    app.include_router(ingress.router)
    app.include_router(operator.router)
    app.include_router(alerts.router)
    app.include_router(alerts.slack_router)
    app.include_router(deliveries.router)
    app.include_router(wallets.router)
    app.include_router(escrows.router)
    app.include_router(exchange.router)
    app.include_router(dashboard.router)
    app.include_router(desk.router)
    app.mount("/dashboard/static", StaticFiles(directory=dashboard.STATIC_DIR), name="dashboard")

    @app.get(
        "/healthz",
        tags=["ops"],
        summary="Liveness and database reachability",
        responses=problems(*ANY_REQUEST, why={503: "The database is unreachable."}),
    )
    async def healthz() -> dict[str, str]:
        try:
            await within(HEALTH_TIMEOUT, app.state.pool.fetchval("SELECT 1"))
        except DATABASE_UNREACHABLE as error:
            raise Unavailable("the database is unreachable", retry_after=5) from error
        return {"status": "ok"}

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=PlainTextResponse,
        responses=problems(*ANY_REQUEST),
    )
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
