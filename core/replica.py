"""Reads the dashboard may take from a streaming replica (``SWITCHBOARD_DATABASE_READ_URL``):
where they go, one consistent snapshot per answer, and how fresh that snapshot is.

Only what a page shows reads here (the sync endpoint, the desk's aggregates). A decision (a
claim, an idempotency key, a money movement, an API key) reads the primary in the transaction
that acts on it: a replica may be behind, and a decision on stale rows is a wrong decision.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from core.db import Connection
from core.errors import ReplicaUnavailable

__all__ = ["REPLICA_UNREACHABLE", "Freshness", "ReadPool", "freshness"]

log = logging.getLogger("switchboard.replica")

REPLICA_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    # Shutting down, starting up, or a statement cancelled (timeout, or by an operator).
    asyncpg.OperatorInterventionError,
    # "canceling statement due to conflict with recovery": the standby needed to replay a
    # change that the snapshot still saw.
    asyncpg.SerializationError,
)
"""What a read on the replica raises when the replica cannot answer right now (a 503, retried
later); anything else is a bug and stays one."""


@dataclass(frozen=True)
class Freshness:
    """How up to date a snapshot is.

    ``as_of``: everything the primary committed up to this instant is in the snapshot (a lower
    bound, taken before the snapshot). ``lag_seconds``: how far ``as_of`` is behind the
    database's clock now; 0 on the primary or on a replica that has applied all it received.
    Both are None when a lagging replica has not applied a transaction since it started and so
    cannot tell.
    """

    read_from: Literal["primary", "replica"]
    as_of: datetime | None
    lag_seconds: float | None


# The replica is caught up when it has applied every byte of WAL it received and is still
# receiving (a replica cut off from its primary cannot know what it misses). Otherwise its data
# is as of the primary's commit time of the last transaction it applied: an upper bound on the
# lag, since nothing may have been committed between that one and the first it has not applied.
_FRESHNESS = """
SELECT pg_is_in_recovery() AS replica,
       clock_timestamp() AS now,
       pg_last_xact_replay_timestamp() AS applied_at,
       coalesce(pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn(), false)
           AND EXISTS (SELECT FROM pg_stat_wal_receiver) AS caught_up
"""


async def freshness(conn: Connection) -> Freshness:
    """How fresh a snapshot taken on ``conn`` from now on is at least."""
    row = await conn.fetchrow(_FRESHNESS)
    assert row is not None
    if not row["replica"]:
        return Freshness("primary", row["now"], 0.0)
    if row["caught_up"]:
        return Freshness("replica", row["now"], 0.0)
    applied_at: datetime | None = row["applied_at"]
    if applied_at is None:
        return Freshness("replica", None, None)
    return Freshness("replica", applied_at, max(0.0, (row["now"] - applied_at).total_seconds()))


class ReadPool:
    """Where the dashboard's reads go: the replica's pool when one is set, else the primary's.

    :meth:`snapshot` hands out a connection inside one ``REPEATABLE READ`` read-only
    transaction, with the :class:`Freshness` of what it sees. A replica that cannot answer
    raises :class:`~core.errors.ReplicaUnavailable` (503 with ``Retry-After``) rather than
    falling back to the primary: the replica is there to keep this load off the primary, and
    moving all of it there at the moment something is already wrong is the failure it guards
    against. Unset ``SWITCHBOARD_DATABASE_READ_URL`` to read the primary on purpose.
    """

    def __init__(self, pool: asyncpg.Pool, *, replica: bool) -> None:
        self.pool = pool
        self.replica = replica

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[tuple[Connection, Freshness]]:
        """A connection in one read-only snapshot, and how fresh that snapshot is."""
        try:
            async with self.pool.acquire() as conn:
                # Freshness first: the snapshot, taken by the first query in the transaction,
                # then holds at least everything applied when freshness was read.
                fresh = await freshness(conn)
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    yield conn, fresh
        except REPLICA_UNREACHABLE as error:
            if not self.replica:
                raise
            log.warning("read replica unavailable: %r", error)
            raise ReplicaUnavailable("the read replica cannot answer right now") from error
