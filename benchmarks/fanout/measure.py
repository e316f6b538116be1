"""The whole fan-out benchmark: every system and shape, interleaved, repeated; and the embedded
stores it needs when run alone (``--only fanout``)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from benchmarks.fanout.plan import FULL_FANOUT, QUICK_FANOUT, SHAPES, SYSTEMS
from benchmarks.fanout.publisher import RedisPublisher
from benchmarks.fanout.report import FanoutSection
from benchmarks.fanout.servers import node_available
from benchmarks.fanout.session import Run, run_once
from benchmarks.report import Section
from benchmarks.stack import HOST
from core.db import migrate
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from devstack.redis import EmbeddedRedis

__all__ = ["fanout_stores", "measure_fanout"]


@contextlib.contextmanager
def fanout_stores() -> Iterator[tuple[str, str]]:
    """Embedded Postgres (migrated) and Redis alone, for ``--only fanout``."""
    root = Path(tempfile.mkdtemp(prefix="switchboard-fanout-"))
    with (
        EmbeddedPostgres(root / "postgres", free_port(HOST)) as postgres,
        EmbeddedRedis(root / "redis", free_port(HOST)) as redis,
    ):
        migrate(postgres.url)
        yield postgres.url, redis.url
    shutil.rmtree(root, ignore_errors=True)


async def measure_fanout(postgres_url: str, redis_url: str, quick: bool) -> Section:
    """Every system, both shapes; medians of ``repeats`` interleaved runs."""
    plan = QUICK_FANOUT if quick else FULL_FANOUT
    node_missing = node_available()
    systems = [s for s in SYSTEMS if s != "node" or node_missing is None]
    pool = await asyncpg.create_pool(postgres_url, min_size=1, max_size=2)
    parts = urlsplit(redis_url)
    _, redis = await asyncio.get_running_loop().create_connection(
        RedisPublisher, parts.hostname or HOST, parts.port or 6379
    )
    results: dict[tuple[str, str], list[Run]] = {}
    try:
        for _ in range(plan.repeats):
            for shape in SHAPES:
                for kind in systems:
                    print(f"  fan-out {kind} {shape} ...", file=sys.stderr, flush=True)
                    runs = results.setdefault((kind, shape), [])
                    runs.append(
                        await run_once(
                            kind,
                            shape,
                            plan,
                            (postgres_url, redis_url),
                            pool,
                            redis,
                            runs[-1] if runs else None,
                        )
                    )
    finally:
        assert redis.transport is not None
        redis.transport.close()
        await pool.close()
    return FanoutSection(plan, results, systems, node_missing)
