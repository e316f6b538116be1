"""Fan-out benchmark: the Switchboard gateway against python-socketio and Node Socket.IO.

Shapes: 1,000 clients over 500 merchants (2 each) and 100 clients on one merchant, spread over
``CLIENT_PROCESSES`` client processes (:mod:`benchmarks.fanout.client_process`). The benchmark
process publishes events to Redis for random merchants, open loop, in 5 ms batches, each
carrying its publish time. Per system and shape, in one server process's life:

1. warm-up: one event per merchant until a round arrives complete;
2. saturation: the offered rate steps up (x1.5, then x1.25 around the last run's saturation)
   for ``step_seconds`` each until the clients have not received everything
   ``grace`` after a step ends. Saturation is the most deliveries/s received *during* any step;
   every step is drained completely (the clients got every event) before the next;
3. latency: ``latency_seconds`` at half that saturation rate, drained, p50/p99 of publish→client.

Each system gets the same publisher and payload in its own wire format: Switchboard's
per-merchant channels (the events are also written to Postgres, outside the timing, so a gap
could be filled as in production), python-socketio's ``socketio`` channel in the JSON
``AsyncRedisManager.emit`` writes, and @socket.io/redis-adapter's per-room channel in its
MessagePack format (what ``@socket.io/redis-emitter`` writes).

The package follows the run: :mod:`~benchmarks.fanout.plan` (systems, shapes, rates),
:mod:`~benchmarks.fanout.servers` (the server under test), :mod:`~benchmarks.fanout.clients`
(the client processes, each :mod:`~benchmarks.fanout.client_process`),
:mod:`~benchmarks.fanout.wire` and :mod:`~benchmarks.fanout.publisher` (each system's messages,
published to Redis), :mod:`~benchmarks.fanout.session` (one run's warm-up, saturation search and
latency), :mod:`~benchmarks.fanout.measure` (every run, and the stores for ``--only fanout``)
and :mod:`~benchmarks.fanout.report` (the three-way table).
"""

from __future__ import annotations

from benchmarks.fanout.measure import fanout_stores, measure_fanout
from benchmarks.fanout.plan import FanoutPlan

__all__ = ["FanoutPlan", "fanout_stores", "measure_fanout"]
