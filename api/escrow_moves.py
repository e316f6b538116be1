"""Waiting for an escrow to move, in Postgres: the api's wait for a create's funding outcome.

Every escrow transition NOTIFYs :data:`core.contracts.ESCROW_MOVES_CHANNEL` with the escrow's id
as it commits (:func:`core.escrow.move`). One LISTEN connection per api process wakes the
requests waiting on that escrow, which then read its status; asking the workflow instead (an
update) would cost the saga a workflow task of its own for every escrow. A wait reads the status
again at least every :data:`RECHECK_SECONDS` whatever it hears, so a lost notification (or a
LISTEN connection that cannot be opened) only makes the answer later, never wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Collection
from typing import Any

import asyncpg

from core.contracts import ESCROW_MOVES_CHANNEL

__all__ = ["RECHECK_SECONDS", "EscrowMoves"]

log = logging.getLogger("switchboard.api.escrow_moves")

RECHECK_SECONDS = 0.5
"""How often a wait reads the escrow's status again without a notification."""


class EscrowMoves:
    """Waits for escrows to leave a set of statuses, woken by their transitions' NOTIFYs."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._listener: asyncpg.Connection | None = None
        self._connecting = asyncio.Lock()

    async def wait(
        self,
        pool: asyncpg.Pool,
        escrow_id: str,
        pending: Collection[str],
        seconds: float,
    ) -> None:
        """Return once the escrow's status is none of ``pending``, or after ``seconds``."""
        moved = asyncio.Event()
        self._waiters[escrow_id].add(moved)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._listen()
                    while (
                        await pool.fetchval("SELECT status FROM escrows WHERE id = $1", escrow_id)
                        in pending
                    ):
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(moved.wait(), RECHECK_SECONDS)
                        moved.clear()
        finally:
            waiters = self._waiters[escrow_id]
            waiters.discard(moved)
            if not waiters:
                del self._waiters[escrow_id]

    async def close(self) -> None:
        """Close the LISTEN connection (waits still running fall back to reading)."""
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            await listener.close(timeout=2)

    async def _listen(self) -> None:
        # Opened on first use and again after it is lost; a failure is logged and the wait
        # goes on reading every RECHECK_SECONDS.
        if self._listener is not None and not self._listener.is_closed():
            return
        async with self._connecting:
            if self._listener is not None and not self._listener.is_closed():
                return
            try:
                listener = await asyncpg.connect(self._database_url, timeout=2)
                await listener.add_listener(ESCROW_MOVES_CHANNEL, self._on_notify)
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                log.warning("cannot LISTEN for escrow moves (reading instead): %r", error)
                return
            self._listener = listener

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, escrow_id: object) -> None:
        for moved in self._waiters.get(str(escrow_id), ()):
            moved.set()
