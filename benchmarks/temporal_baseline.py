"""Baselines from the Temporal server itself, with a workflow that does nothing.

* :meth:`NoopWorkflows.start_ceiling` — how fast ``client.start_workflow`` can start workflows
  on this server: ``count`` starts with the relay's concurrency, on a task queue nobody polls (no
  worker involved). The pipeline cannot start webhook workflows faster than this.
* :meth:`NoopWorkflows.completion_rate` — how many no-op workflows complete per second when a
  batch of them is executed at once: the most this server and one worker could finish.
* :meth:`NoopWorkflows.round_trips` — start-to-result latency of the no-op workflow at a given
  rate, with eager start and a worker in this process: the least a durable step on this Temporal
  server costs, to put the receipt-to-published latency in proportion.
* :meth:`SagaShapes.completion_rate` — how many escrows per second Temporal alone could finish:
  the saga's calls on the server (:mod:`benchmarks.saga_shape_workflow`) with steps that do
  nothing, executed at once like the escrow benchmark's batch.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from temporalio import activity
from temporalio.client import Client, WorkflowUpdateStage
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from benchmarks import pacing
from benchmarks.noop_workflow import NoopWorkflow
from benchmarks.saga_shape_workflow import FUNDED_STEP, STEP, SagaShapeWorkflow
from benchmarks.stats import Latency

__all__ = ["NoopWorkflows", "RoundTrips", "SagaShapes"]


@dataclass(frozen=True)
class RoundTrips:
    """One round-trip run: latency, and the workflows it ran (for their histories)."""

    latency: Latency
    workflow_ids: list[str]


class NoopWorkflows:
    """Starts and runs :class:`NoopWorkflow` on one Temporal server; see the module docstring."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._task_queue = f"bench-noop-{uuid.uuid4().hex[:8]}"

    async def start_ceiling(self, count: int, concurrency: int) -> float:
        """Workflow starts per second, ``count`` of them, ``concurrency`` at a time."""
        unpolled = f"bench-unpolled-{uuid.uuid4().hex[:8]}"
        limit = asyncio.Semaphore(concurrency)

        async def start(index: int) -> None:
            async with limit:
                await self._client.start_workflow(
                    NoopWorkflow.run, id=f"{unpolled}-{index}", task_queue=unpolled
                )

        started = time.perf_counter()
        await asyncio.gather(*map(start, range(count)))
        return count / (time.perf_counter() - started)

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        """A worker for the round trips, running in this process while the context is open."""
        async with Worker(self._client, task_queue=self._task_queue, workflows=[NoopWorkflow]):
            yield

    async def completion_rate(self, count: int, *, grace: float) -> float:
        """No-op workflows completed per second when ``count`` are executed at once, from their
        common due time to the last result (eager start, the worker of :meth:`worker`)."""
        ids = [f"{self._task_queue}-{uuid.uuid4().hex[:12]}" for _ in range(count)]

        async def run(workflow_id: str) -> None:
            await self._client.execute_workflow(
                NoopWorkflow.run,
                id=workflow_id,
                task_queue=self._task_queue,
                request_eager_start=True,
            )

        paced = await pacing.burst_loop([ids], 1.0, run, grace=grace)
        finished = [o.latency for o in paced.outcomes if o.finished]
        return len(finished) / max(finished) if finished else 0.0

    async def round_trips(self, rate: float, seconds: float, *, grace: float) -> RoundTrips:
        """Run no-op workflows at ``rate``/s for ``seconds``; latency from due time to result."""
        ids = [f"{self._task_queue}-{uuid.uuid4().hex[:12]}" for _ in range(int(rate * seconds))]

        async def run(workflow_id: str) -> str:
            await self._client.execute_workflow(
                NoopWorkflow.run,
                id=workflow_id,
                task_queue=self._task_queue,
                request_eager_start=True,
            )
            return workflow_id

        paced = await pacing.open_loop(ids, rate, run, grace=grace)
        return RoundTrips(Latency.of([o.latency for o in paced.outcomes]), paced.finished)


class SagaShapes:
    """Runs :class:`SagaShapeWorkflow` as the api and worker run an escrow's saga: started
    without eager start, released by an update (accepted, then its result asked for, as the api
    does) once the saga says it is funded; the worker in this process, unsandboxed like the
    production worker's."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._task_queue = f"bench-saga-shape-{uuid.uuid4().hex[:8]}"
        self._funded: dict[str, asyncio.Event] = {}

    @activity.defn(name=STEP)
    async def step(self, name: str) -> str:
        return name

    @activity.defn(name=FUNDED_STEP)
    async def funded(self, workflow_id: str) -> None:
        waiting = self._funded.get(workflow_id)
        if waiting is not None:
            waiting.set()

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[None]:
        """The saga shape's worker, running in this process while the context is open."""
        async with Worker(
            self._client,
            task_queue=self._task_queue,
            workflows=[SagaShapeWorkflow],
            activities=[self.step, self.funded],
            workflow_runner=UnsandboxedWorkflowRunner(),
        ):
            yield

    async def completion_rate(self, count: int, *, grace: float) -> float:
        """Sagas funded and released per second when ``count`` are started at once, from their
        common due time to the last release."""
        ids = [f"{self._task_queue}-{uuid.uuid4().hex[:12]}" for _ in range(count)]

        async def run(workflow_id: str) -> None:
            funded = self._funded[workflow_id] = asyncio.Event()
            try:
                handle = await self._client.start_workflow(
                    SagaShapeWorkflow.run, id=workflow_id, task_queue=self._task_queue
                )
                await funded.wait()
                update = await handle.start_update(
                    SagaShapeWorkflow.release, wait_for_stage=WorkflowUpdateStage.ACCEPTED
                )
                await update.result()
            finally:
                del self._funded[workflow_id]

        paced = await pacing.burst_loop([ids], 1.0, run, grace=grace)
        finished = [o.latency for o in paced.outcomes if o.finished]
        return len(finished) / max(finished) if finished else 0.0
