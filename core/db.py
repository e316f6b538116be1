"""Postgres access shared by every process: the asyncpg pool factory and schema migrations.

The schema itself lives in ``migrations/`` (Alembic); queries live with the code that owns them
(ingress inbox in ``api/inbox.py``, business writes in ``activities/ledger.py``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

__all__ = [
    "DATABASE_UNREACHABLE",
    "Connection",
    "connect_pool",
    "is_permanent",
    "migrate",
    "within",
]

T = TypeVar("T")

Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
"""A connection on its own or borrowed from a pool: queries accept either."""

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

DATABASE_UNREACHABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)
"""What a read or write raises when Postgres is down, hung or refusing: catch these to answer
503 (or serve from a cache) instead of failing."""

_abandoned: set[asyncio.Task[Any]] = set()


async def within(seconds: float, query: Awaitable[T]) -> T:
    """``query``'s result, or :class:`TimeoutError` after ``seconds`` at the latest.

    Unlike ``asyncio.timeout``, the caller does not wait for the cancelled query to clean up:
    against a hung server asyncpg's cancellation (a cancel request, then the pool release) can
    take as long again as the wait itself, so it finishes in the background.
    """
    task: asyncio.Task[T] = asyncio.ensure_future(query)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        return task.result()
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_forget)
    raise TimeoutError(f"no answer from Postgres within {seconds} s")


def _forget(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


async def _init_connection(connection: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Release hook that skips asyncpg's default reset query (a round trip per release).

    Safe because pooled connections never hold session state: locks are transaction-scoped
    (``pg_advisory_xact_lock``), nothing SETs session variables, and LISTEN uses a dedicated
    connection. asyncpg still rolls back a transaction left open.
    """


async def connect_pool(
    database_url: str,
    *,
    size: int = 10,
    timeout: float | None = None,
    read_only: bool = False,
) -> asyncpg.Pool:
    """An asyncpg pool whose connections speak JSON for ``json``/``jsonb`` columns.

    With ``timeout``, connecting and every statement give up after that many seconds
    (``TimeoutError``), so a Postgres that hangs rather than refuses cannot hang the caller.
    Waiting for a free connection is bounded by the statements ahead of it; callers that need
    one overall bound wrap the whole wait (``asyncio.timeout``).

    A ``read_only`` pool (a replica's) connects on first use, so its server being down does not
    stop the process from starting, and its transactions refuse writes even when the URL names
    a primary.
    """
    pool: asyncpg.Pool = await asyncpg.create_pool(
        database_url,
        min_size=0 if read_only else 1,
        max_size=size,
        init=_init_connection,
        reset=_keep_session,
        timeout=60.0 if timeout is None else timeout,  # asyncpg's default connect timeout
        command_timeout=timeout,
        server_settings={"default_transaction_read_only": "on"} if read_only else None,
    )
    return pool


def migrate(database_url: str) -> None:
    """Apply every pending Alembic migration (blocking; run it off the event loop)."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")


# SQLSTATE classes of errors that no retry can cure: the data itself is wrong (22, e.g. a date or
# number out of range, a NUL in text) or breaks an integrity rule (23, e.g. a check or foreign
# key). A unique violation (23505) is the exception: it is how a concurrent writer's race shows,
# and the retry sees the winner's row. Everything else (connections, serialization failures,
# deadlocks, timeouts, a missing table during a deploy) may pass, so it is retried.
_PERMANENT_SQLSTATE_CLASSES = ("22", "23")
_RACE_SQLSTATES = frozenset({"23505"})


def is_permanent(error: BaseException) -> bool:
    """Whether a Postgres error can never succeed on retry (see the classes above)."""
    if not isinstance(error, asyncpg.PostgresError):
        return False
    sqlstate = str(getattr(error, "sqlstate", "") or "")
    return sqlstate[:2] in _PERMANENT_SQLSTATE_CLASSES and sqlstate not in _RACE_SQLSTATES
