"""The loop every relay shares: LISTEN for a NOTIFY, drain what is ready, survive outages.

A relay drains a Postgres outbox into Temporal. NOTIFY wakes it at once; a periodic sweep
covers notifications missed while it was disconnected; any error (Postgres or Temporal away)
backs off exponentially and starts over, since the rows wait durably in Postgres meanwhile.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

__all__ = ["NotifiedRelay"]


class NotifiedRelay(abc.ABC):
    """Base of the relays: subclasses name their channel and implement :meth:`drain`."""

    channel: str

    def __init__(self, database_url: str, sweep_seconds: float) -> None:
        self._database_url = database_url
        self._sweep_seconds = sweep_seconds
        self._wake = asyncio.Event()
        self._backoff = 0.1
        self._log = logging.getLogger(f"switchboard.relay.{self.channel}")

    @abc.abstractmethod
    async def drain(self) -> int:
        """Hand everything ready now to Temporal; returns how many rows were handed over."""

    async def more_is_ready_soon(self) -> bool:
        """Whether to drain again at once instead of waiting for a NOTIFY (e.g. at capacity)."""
        return False

    async def before_round(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """Hook run before each drain round (gauges, for instance)."""

    async def run(self) -> None:
        """Relay until cancelled, surviving Postgres and Temporal outages."""
        while True:
            try:
                await self._listen_and_drain()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._log.warning("relay interrupted, retrying in %.1fs: %r", self._backoff, error)
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, 5.0)

    async def _listen_and_drain(self) -> None:
        listener = await asyncpg.connect(self._database_url)
        try:
            await listener.add_listener(self.channel, self._on_notify)
            while True:
                await self.before_round()
                handed_over = await self.drain()
                self._backoff = 0.1
                if handed_over == 0 and await self.more_is_ready_soon():
                    # Running workflows finish in milliseconds; check again soon.
                    await asyncio.sleep(0.02)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._sweep_seconds)
                self._wake.clear()
                if listener.is_closed():
                    raise ConnectionError("lost the LISTEN connection")
        finally:
            await listener.close(timeout=2)

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()
