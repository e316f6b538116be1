"""The circuit breaker in front of every downstream destination: a merchant's endpoint (outbound
deliveries) or a provider (payouts), kept in Postgres so every worker sees one state.

A destination's row holds its failure streak (``consecutive_failures``), the end of its open
period (``circuit_open_until``) and how often it re-opened (``circuit_trips``). The circuit opens
when the streak reaches ``circuit_failure_threshold`` while it is closed, for
``circuit_cooldown_seconds`` doubling per re-trip up to ``circuit_max_cooldown_seconds``. Once
the open period has run out, exactly one caller claims the half-open probe (the circuit stays
held for the probe's lease meanwhile); the probe's success closes the circuit, its failure opens
it again for longer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

import asyncpg

from core.db import Connection
from core.settings import Settings

__all__ = ["ENDPOINTS", "PROVIDERS", "Admission", "CircuitBreaker", "Destinations"]

# The half-open probe holds the circuit for its timeout plus this, so no second probe starts.
PROBE_LEASE_MARGIN_SECONDS = 5.0
# A caller that finds the probe already out asks again after about this long.
PROBING_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class Destinations:
    """A table of destinations behind breakers: its rows carry the breaker's three columns and
    are keyed by ``key``; ``created_on_demand`` rows appear with their first failure."""

    table: str
    key: str
    created_on_demand: bool = False


ENDPOINTS = Destinations("endpoints", "id")
PROVIDERS = Destinations("providers", "base_url", created_on_demand=True)


@dataclass(frozen=True)
class Admission:
    """Whether a call may go out now, and if not, how long to wait and why."""

    allowed: bool
    probe: bool = False
    """The call is the half-open circuit's one probe: report its outcome with ``probe=True``."""
    wait_seconds: float = 0.0
    reason: str = ""


ADMITTED = Admission(allowed=True)

Executor: TypeAlias = Connection | asyncpg.Pool


class CircuitBreaker:
    """The breaker of each destination in ``destinations`` (see the module docstring)."""

    def __init__(self, destinations: Destinations, settings: Settings) -> None:
        self.destinations = destinations
        self.settings = settings
        table, key = destinations.table, destinations.key
        self._read = f"SELECT circuit_open_until, clock_timestamp() FROM {table} WHERE {key} = $1"
        self._claim = (
            f"UPDATE {table} SET circuit_open_until = clock_timestamp() + make_interval(secs => $2)"
            f" WHERE {key} = $1 AND circuit_open_until <= clock_timestamp() RETURNING {key}"
        )
        self._close = (
            f"UPDATE {table} SET consecutive_failures = 0, circuit_open_until = NULL,"
            f" circuit_trips = 0 WHERE {key} = $1"
            " AND (consecutive_failures > 0 OR circuit_open_until IS NOT NULL)"
            f" RETURNING {key}"
        )
        self._create = f"INSERT INTO {table} ({key}) VALUES ($1) ON CONFLICT DO NOTHING"
        self._fail = (
            "WITH opens AS (SELECT consecutive_failures + 1 >= $2"
            f" AND (circuit_open_until IS NULL OR $5) AS yes FROM {table} WHERE {key} = $1)"
            f" UPDATE {table} SET consecutive_failures = consecutive_failures + 1,"
            " circuit_open_until = CASE WHEN opens.yes"
            "   THEN clock_timestamp() + make_interval(secs => least($3 * 2 ^ circuit_trips, $4))"
            "   ELSE circuit_open_until END,"
            " circuit_trips = circuit_trips + opens.yes::int"
            f" FROM opens WHERE {key} = $1 RETURNING consecutive_failures"
        )

    async def admit(self, conn: Executor, key: str, *, lease_seconds: float) -> Admission:
        """Whether a call to ``key`` may go out now (reads the destination's circuit)."""
        row = await conn.fetchrow(self._read, key)
        if row is None:
            return ADMITTED
        return await self.admit_known(conn, key, row[0], row[1], lease_seconds=lease_seconds)

    async def admit_known(
        self,
        conn: Executor,
        key: str,
        open_until: datetime | None,
        now: datetime,
        *,
        lease_seconds: float,
    ) -> Admission:
        """:meth:`admit` for a caller that has just read ``circuit_open_until`` and the
        database's ``clock_timestamp()`` itself. A half-open circuit gives its probe to one
        caller, held for ``lease_seconds`` plus a margin."""
        if open_until is None:
            return ADMITTED
        if open_until > now:
            return Admission(False, wait_seconds=(open_until - now).total_seconds(), reason="open")
        claimed = await conn.fetchval(self._claim, key, lease_seconds + PROBE_LEASE_MARGIN_SECONDS)
        if claimed is None:
            return Admission(False, wait_seconds=PROBING_RETRY_SECONDS, reason="probing")
        return Admission(True, probe=True)

    async def succeeded(self, conn: Executor, key: str) -> bool:
        """Close ``key``'s circuit and end its failure streak; True if it had one (or was open)."""
        return await conn.fetchval(self._close, key) is not None

    async def failed(self, conn: Executor, key: str, *, probe: bool) -> int | None:
        """Count a failure of ``key``; returns its failure streak (None if it has no row).

        The circuit opens when the streak reaches the threshold while it is closed, or when its
        probe failed (each re-opening waits twice as long, up to the maximum).
        """
        if self.destinations.created_on_demand:
            await conn.execute(self._create, key)
        settings = self.settings
        streak: int | None = await conn.fetchval(
            self._fail,
            key,
            settings.circuit_failure_threshold,
            settings.circuit_cooldown_seconds,
            settings.circuit_max_cooldown_seconds,
            probe,
        )
        return streak
