"""A Postgres that hangs rather than refuses (SIGSTOPped) must not hang the ingress or /healthz.

Postgres of its own (embedded, free port), every process of it stopped with SIGSTOP: connections
are accepted by the kernel and then nothing answers. The ingress must answer 503 + Retry-After
within the database timeout (a partner lookup not in the cache within a second), /healthz 503
within a second, and once Postgres continues the api recovers on its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from core.db import migrate
from core.settings import Settings
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from tests.support import Partner, add_partner, running_api, stores, wait_for

DATABASE_TIMEOUT = 2.0
SLACK = 1.0
"""Scheduling slack on a shared 2-core machine, added to every asserted bound."""


def _server_pids(postgres: EmbeddedPostgres) -> list[int]:
    """The postmaster and every process it started (backends, checkpointer, ...)."""
    postmaster = int((postgres.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(entry.name))
    return [postmaster, *children]


@contextmanager
def hung(postgres: EmbeddedPostgres) -> Iterator[None]:
    """Every Postgres process stopped for the block, continued afterwards whatever happens."""
    pids = _server_pids(postgres)
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


async def _timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) >= 1


async def test_a_hung_postgres_gets_503_in_time_not_a_hang(
    settings: Settings, tmp_path: Path
) -> None:
    """While Postgres hangs: webhooks 503 + Retry-After within the database timeout, /healthz
    503 within a second; after it continues, webhooks are accepted again."""
    with EmbeddedPostgres(tmp_path / "pg", free_port()) as postgres:
        await asyncio.to_thread(migrate, postgres.url)
        settings = settings.model_copy(
            update={"database_url": postgres.url, "database_timeout_seconds": DATABASE_TIMEOUT}
        )
        async with (
            running_api(settings) as api_url,
            httpx.AsyncClient(base_url=api_url, timeout=30) as http,
            stores(settings) as (pool, _),
        ):
            cached: Partner = await add_partner(pool, http)
            uncached: Partner = await add_partner(pool, http)
            body = cached.envelope("partner.custom", note="warm")
            assert (await cached.post(body)).status_code == 202

            with hung(postgres):
                outcomes = await asyncio.gather(
                    *(
                        _timed(cached.post(cached.envelope("partner.custom", n=n)))
                        for n in range(5)
                    ),
                    _timed(uncached.post(uncached.envelope("partner.custom", n=0))),
                    _timed(http.get("/healthz")),
                )
            *webhooks, (unknown, unknown_s), (health, health_s) = outcomes
            logging.getLogger(__name__).info(
                "hung Postgres: webhooks 503 after %.2f s at most, uncached partner %.2f s,"
                " /healthz %.2f s",
                max(seconds for _, seconds in webhooks),
                unknown_s,
                health_s,
            )
            for response, seconds in webhooks:
                assert_unavailable(response)
                assert seconds < DATABASE_TIMEOUT + SLACK, seconds
            assert_unavailable(unknown)
            assert unknown_s < 1.0 + SLACK, unknown_s
            assert_unavailable(health)
            assert health_s < 1.0, health_s

            async def accepted_again() -> bool:
                response = await cached.post(cached.envelope("partner.custom", note="back"))
                return response.status_code == 202

            await wait_for(accepted_again, timeout=30, interval=0.2, what="the ingress to recover")
