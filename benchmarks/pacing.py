"""Open- and closed-loop scheduling of async calls, shared by every load the benchmarks offer.

* :func:`open_loop` — call *i* is due at ``start + i / rate`` whatever happened before, and its
  latency is measured from that due time, so a stall also counts against every call queued behind
  it (no coordinated omission). Calls still unfinished ``grace`` seconds after the last due time
  are cancelled and kept as *censored*: their latency is at least ``cutoff - due``.
* :func:`burst_loop` — the same, for bursts: every call of burst *b* is due at ``start + b / rate``
  and made at once (simultaneous claimers of one request, concurrent debits of one wallet), each
  call's latency measured from its burst's due time.
* :func:`closed_loop` — ``concurrency`` callers each make the next call as soon as their previous
  one returned, until ``duration`` is over or the items run out (saturation). Calls still
  unfinished ``grace`` seconds after that are cancelled and kept as censored too.

Both are bounded by the number of items and by time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Outcome", "Paced", "burst_loop", "closed_loop", "open_loop"]

I = TypeVar("I")  # noqa: E741 - the item type
T = TypeVar("T")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """One call: its result (None if cut off) and its latency in seconds (a lower bound if cut)."""

    value: T | None
    latency: float
    finished: bool


@dataclass
class Paced(Generic[T]):
    """All calls of one run, in the order they were made."""

    outcomes: list[Outcome[T]] = field(default_factory=list)
    first_call_wall: float = 0.0
    """``time.time()`` of the first call, to compare with database timestamps."""
    elapsed: float = 0.0
    """Seconds from the first call until the last one finished."""

    @property
    def finished(self) -> list[T]:
        return [o.value for o in self.outcomes if o.finished and o.value is not None]

    @property
    def censored(self) -> int:
        return sum(not o.finished for o in self.outcomes)


async def open_loop(
    items: Sequence[I], rate: float, call: Callable[[I], Awaitable[T]], *, grace: float
) -> Paced[T]:
    """Call ``call(item)`` for each item on schedule at ``rate``/s (see the module docstring)."""
    return await _scheduled(items, [i / rate for i in range(len(items))], call, grace=grace)


async def burst_loop(
    bursts: Sequence[Sequence[I]], rate: float, call: Callable[[I], Awaitable[T]], *, grace: float
) -> Paced[T]:
    """Make every call of a burst at once, bursts due at ``rate``/s (see the module docstring).

    The outcomes are in order, burst after burst.
    """
    items = [item for burst in bursts for item in burst]
    offsets = [b / rate for b, burst in enumerate(bursts) for _ in burst]
    return await _scheduled(items, offsets, call, grace=grace)


async def _scheduled(
    items: Sequence[I],
    offsets: Sequence[float],
    call: Callable[[I], Awaitable[T]],
    *,
    grace: float,
) -> Paced[T]:
    """Call ``call(items[i])`` at ``offsets[i]`` seconds from now (ascending); latency from then."""
    paced: Paced[T] = Paced(first_call_wall=time.time())
    start = time.perf_counter()
    last_finish = start
    due_times = [start + offset for offset in offsets]
    results: dict[int, tuple[T, float]] = {}

    async def one(index: int) -> None:
        nonlocal last_finish
        value = await call(items[index])
        finished = time.perf_counter()
        last_finish = max(last_finish, finished)
        results[index] = (value, finished - due_times[index])

    tasks = []
    for index, due in enumerate(due_times):
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index)))
    cutoff = await _wait_until(tasks, (due_times[-1] if due_times else start) + grace)
    for index, due in enumerate(due_times):
        if index in results:
            value, latency = results[index]
            paced.outcomes.append(Outcome(value, latency, finished=True))
        else:
            paced.outcomes.append(Outcome(None, cutoff - due, finished=False))
    paced.elapsed = last_finish - start
    return paced


async def closed_loop(
    items: Sequence[I],
    concurrency: int,
    duration: float,
    call: Callable[[I], Awaitable[T]],
    *,
    grace: float,
) -> Paced[T]:
    """``concurrency`` callers back to back for ``duration`` s or until the items run out."""
    paced: Paced[T] = Paced(first_call_wall=time.time())
    pending = iter(items)
    start = time.perf_counter()
    deadline = start + duration
    last_finish = start
    in_flight: dict[int, float] = {}

    async def caller(number: int) -> None:
        nonlocal last_finish
        while time.perf_counter() < deadline:
            item = next(pending, None)
            if item is None:
                return
            in_flight[number] = called = time.perf_counter()
            value = await call(item)
            finished = time.perf_counter()
            del in_flight[number]
            last_finish = max(last_finish, finished)
            paced.outcomes.append(Outcome(value, finished - called, finished=True))

    tasks = [asyncio.create_task(caller(number)) for number in range(concurrency)]
    cutoff = await _wait_until(tasks, deadline + grace)
    paced.outcomes += [
        Outcome(None, cutoff - called, finished=False) for called in in_flight.values()
    ]
    paced.elapsed = last_finish - start
    return paced


async def _wait_until(tasks: list[asyncio.Task[None]], cutoff: float) -> float:
    """Wait for ``tasks`` until ``cutoff`` (perf_counter); cancel the rest; return the time.

    A call that raised is a bug in the benchmark, not a slow answer: its error is re-raised.
    """
    if not tasks:
        return time.perf_counter()
    done, late = await asyncio.wait(tasks, timeout=max(0.0, cutoff - time.perf_counter()))
    for task in late:
        task.cancel()
    for task in late:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for task in done:
        task.result()
    return min(cutoff, time.perf_counter())
