"""Postgres access shared by every process: the asyncpg pool factory and schema migrations.

The schema itself lives in ``migrations/`` (Alembic); queries live with the code that owns them
(ingress inbox in ``api/inbox.py``, business writes in ``activities/ledger.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

__all__ = ["Connection", "connect_pool", "migrate"]

Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
"""A connection on its own or borrowed from a pool: queries accept either."""

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


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


async def connect_pool(database_url: str, *, size: int = 10) -> asyncpg.Pool:
    """An asyncpg pool whose connections speak JSON for ``json``/``jsonb`` columns."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=size, init=_init_connection, reset=_keep_session
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
