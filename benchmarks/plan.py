"""How long and how hard each measurement runs: the full plan (~30 min) and ``--quick``.

Every measurement repeats ``repeats`` times, alternating baseline and subject so drift on a
noisy machine hits both alike; the report shows the medians. In the quick plan the 10 s of
offered load per measurement is split across the three runs, and the baselines (which are
steady and cheap) get shorter windows, to stay within a minute including start-up. The alert
storm keeps its rate and has repeats of its own (three runs of a minute; one of 12 s when quick),
since what it measures is a minute of facts. Exchange claims and contended debits keep their
schedules (one request every 0.25 s, one burst of 200 debits every 2.5 s) with fewer requests and
bursts when quick (about 15 s and 50 s). Exchange transitions watched live keep their rate (20 a
second) over 100 requests a run (20 when quick).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FULL", "QUICK", "Plan"]

CLAIM_RATE = 4.0
"""Exchange requests per second, each raced by 50 claimers: one request's claims are answered
well within the 0.25 s before the next is due."""
DEBIT_RATE = 0.4
"""Bursts of 200 debits per second: 2.5 s apart, so one burst has drained before the next."""
ESCROW_RATE = 5.0
"""Escrows created per second in the steady stream whose create→funded latency is measured."""
DESK_LIVE_RATE = 20.0
"""Exchange transitions per second watched live: 5 requests a second, each taken through
create, claim, processing and completed."""


@dataclass(frozen=True)
class Plan:
    """Durations (seconds) and sizes of one benchmark run."""

    name: str
    repeats: int
    # Ingress, open loop at a fixed offered rate, worker draining.
    ingress_rate: float
    ingress_seconds: float
    ingress_baseline_seconds: float
    grace: float
    """How long after a run's last due time (open loop) or end (closed loop) unanswered requests
    are awaited before they are cut off and counted as censored."""
    # Ingress at saturation (closed loop), and the load-generator check.
    connections: int
    saturation_seconds: float
    loadgen_seconds: float
    # Pipeline.
    pipeline_rate: float
    pipeline_seconds: float
    pipeline_baseline_seconds: float
    burst: int
    settle_timeout: float
    history_sample: int
    # Outbound deliveries (:mod:`benchmarks.deliveries`); they reuse ``settle_timeout``.
    delivery_burst: int
    delivery_rate: float
    delivery_seconds: float
    delivery_baseline_seconds: float
    # Webhook to WebSocket client through the gateway (:mod:`benchmarks.live`); its own repeats.
    live_rate: float
    live_seconds: float
    live_repeats: int
    # Alert storm (:mod:`benchmarks.oncall`): facts per second, seconds, its own repeats.
    storm_rate: float
    storm_seconds: float
    storm_repeats: int
    # Exchange claims (:mod:`benchmarks.claims`): requests per run, each raced by 50 claimers,
    # due at ``claim_rate``/s.
    claim_requests: int
    claim_rate: float
    # Contended wallet debits (:mod:`benchmarks.debits`): bursts of 200 per run, due at
    # ``debit_rate``/s.
    debit_bursts: int
    debit_rate: float
    # Escrows end to end (:mod:`benchmarks.escrows`): a batch at once (completion rate), then a
    # steady stream at ``escrow_rate``/s (create→funded latency).
    escrow_batch: int
    escrow_steady: int
    escrow_rate: float
    # Exchange transitions to watching clients (:mod:`benchmarks.desk_live`): requests per run,
    # each four transitions, transitions due at ``desk_live_rate``/s.
    desk_live_requests: int
    desk_live_rate: float


FULL = Plan(
    name="full",
    repeats=3,
    ingress_rate=500,
    ingress_seconds=30,
    ingress_baseline_seconds=10,
    grace=5,
    connections=64,
    saturation_seconds=5,
    loadgen_seconds=3,
    pipeline_rate=10,
    pipeline_seconds=30,
    pipeline_baseline_seconds=15,
    burst=600,
    settle_timeout=120,
    history_sample=30,
    delivery_burst=100,
    delivery_rate=10,
    delivery_seconds=8,
    delivery_baseline_seconds=4,
    live_rate=10,
    live_seconds=20,
    live_repeats=3,
    storm_rate=10_000 / 60,
    storm_seconds=60,
    storm_repeats=3,
    claim_requests=100,
    claim_rate=CLAIM_RATE,
    debit_bursts=10,
    debit_rate=DEBIT_RATE,
    escrow_batch=100,
    escrow_steady=50,
    escrow_rate=ESCROW_RATE,
    desk_live_requests=100,
    desk_live_rate=DESK_LIVE_RATE,
)

QUICK = Plan(
    name="quick",
    repeats=3,
    ingress_rate=500,
    ingress_seconds=10 / 3,
    ingress_baseline_seconds=0.6,
    grace=0.3,
    connections=64,
    saturation_seconds=0.5,
    loadgen_seconds=0.3,
    pipeline_rate=10,
    pipeline_seconds=10 / 3,
    pipeline_baseline_seconds=1,
    burst=20,
    settle_timeout=10,
    history_sample=10,
    delivery_burst=20,
    delivery_rate=10,
    delivery_seconds=1,
    delivery_baseline_seconds=0.5,
    live_rate=10,
    live_seconds=8,
    live_repeats=1,
    storm_rate=10_000 / 60,
    storm_seconds=12,
    storm_repeats=1,
    claim_requests=10,
    claim_rate=CLAIM_RATE,
    debit_bursts=3,
    debit_rate=DEBIT_RATE,
    escrow_batch=20,
    escrow_steady=10,
    escrow_rate=ESCROW_RATE,
    desk_live_requests=20,
    desk_live_rate=DESK_LIVE_RATE,
)
