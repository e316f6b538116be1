"""Alert-storm benchmark: failure facts recorded at 10,000 a minute over 50 dedup keys, routed to
PagerDuty and Slack, beside the same facts recorded with nothing routing them.

Facts are :func:`core.audit.raise_alert` calls, each in its own transaction as the detectors make
them, for the critical kind ``money_event_dead_lettered``, one dedup key per merchant, paced open
loop (:func:`benchmarks.pacing.open_loop`) at ``plan.storm_rate``/s for ``plan.storm_seconds``.
Key *k* first appears at fact ``k * facts / 50`` (a storm spreading over a minute); every other
fact repeats one of the keys already open, drawn with a seeded RNG. The worker runs a policy of
its own (:data:`POLICY`): critical alerts grouped by kind and merchant, ``group_wait`` 0 and
PagerDuty then Slack at step 0, so one group per key and "page" is the PagerDuty trigger the sink
(:class:`devstack.oncall_sink.OncallSink`, in this process) accepts with a 202.

Baseline: the same facts (new keys) recorded while the worker, and with it the alert relay, is
stopped, so nothing routes them; they are resolved in the database before the worker starts
again. Each repeat runs the baseline, then the routed storm; one warm-up alert is routed and paged
before each routed storm and not counted.

Fact→page latency is, for each key, the sink's receipt of its group's trigger minus the due time
of the key's first fact (both ``time.time()`` in this process). Temporal actions are counted from
the escalation workflows' histories (:mod:`benchmarks.actions`) once each has sent its page and
started its next timer (it waits an hour there, so nothing more happens during the run).
"""

from __future__ import annotations

import asyncio
import math
import random
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from activities.ledger import MONEY_EVENT_PARKED
from activities.notify import pagerduty_dedup_key
from benchmarks.actions import ACTION_RULES, HistoryCost
from benchmarks.harness import Harness, progress
from benchmarks.pacing import Paced, open_loop
from benchmarks.report import Row, Section, Target
from benchmarks.stack import HOST, OTHERS, CpuMeter, CpuUse
from benchmarks.stats import Latency
from core.audit import raise_alert
from core.db import connect_pool
from core.settings import PAGERDUTY_SINK_PATH, SLACK_SINK_PATH
from devstack.oncall_sink import OncallSink
from devstack.ports import free_port

__all__ = ["POLICY", "measure_oncall"]

T = TypeVar("T")

KEYS = 50
SEED = 8
RECORDING_CONNECTIONS = 8
PAGE_TIMEOUT = 60.0
"""Seconds after a storm's last fact within which every group's page must have arrived."""
HISTORY_CONCURRENCY = 8
POLL = 0.05
PAGE_P99_TARGET_MS = 2000.0

POLICY = """
routes:
  - name: critical
    match: {severity: critical}
    group_by: [kind, merchant_id]
    group_wait: 0s
    repeat_interval: 1h
    escalation:
      - {after: 0s, notify: [pagerduty, slack]}
  - name: default
    escalation:
      - {after: 0s, notify: [slack]}
"""
"""The storm's policy: a page and a Slack message per group at once, then nothing for an hour."""


@dataclass(frozen=True)
class Fact:
    """One failure fact: its position in the storm and the merchant (dedup key) it is about."""

    index: int
    merchant: str


@dataclass(frozen=True)
class Recording:
    """How recording one storm's facts went (either side)."""

    facts: int
    latency: Latency
    """From each fact's due time to its commit."""
    censored: int
    cpu: CpuUse


@dataclass(frozen=True)
class Routed:
    """What one routed storm produced."""

    recording: Recording
    groups: int
    pages: int
    groups_not_paged_once: int
    repeat_pages: int
    slack_posts: int
    page_latency: Latency
    actions: int
    actions_per_group: tuple[int, int]
    facts_per_group: tuple[int, int]
    repeat_actions: int
    """Signals, updates and workflow starts beyond one per group: what repeats could cost."""
    breakdown: Counter[str]


def storm(tag: str, facts: int, seed: int) -> list[Fact]:
    """The storm's facts in order: key *k* opens at fact ``k * facts // KEYS``, the others
    repeat an open key at random."""
    rng = random.Random(seed)
    openings = {k * facts // KEYS: k for k in range(KEYS)}
    opened = 0
    planned: list[Fact] = []
    for index in range(facts):
        if index in openings:
            key = openings[index]
            opened += 1
        else:
            key = rng.randrange(opened)
        planned.append(Fact(index, f"{tag}_m{key:02d}"))
    return planned


def dedup_key(fact: Fact) -> str:
    return f"{MONEY_EVENT_PARKED.name}:{fact.merchant}"


async def measure_oncall(h: Harness) -> Section:
    """The alert-storm benchmark (see the module docstring); one report section."""
    plan = h.plan
    policy = h.stack.root / "oncall-storm.yaml"
    policy.write_text(textwrap.dedent(POLICY))
    baselines: list[Recording] = []
    routed: list[Routed] = []
    phase = f"alert storm {plan.storm_rate * 60:,.0f}/min over {KEYS} keys"
    with OncallSink(free_port(HOST)) as sink:
        worker_env = {
            "ALERTING_POLICY": str(policy),
            "SLACK_BASE_URL": f"{sink.url}{SLACK_SINK_PATH}",
            "PAGERDUTY_BASE_URL": f"{sink.url}{PAGERDUTY_SINK_PATH}",
            "MONITOR_SCHEDULE": "false",
        }
        recorder = await connect_pool(h.stack.database_url, size=RECORDING_CONNECTIONS)
        try:
            with progress(phase):
                for run in range(plan.storm_repeats):
                    h.stack.stop_worker()
                    baselines.append(await _baseline(h, recorder, run))
                    h.stack.restart_worker(worker_env)
                    await _warm_up(h, recorder, sink)
                    routed.append(await _routed(h, recorder, sink, run))
                    h.stack.check_alive()
        finally:
            await recorder.close()
            with progress("restarting the worker with its usual settings"):
                h.stack.restart_worker({})
            h.meter = CpuMeter(h.stack.pids())
    h.phase_cpu[phase] = CpuUse.total([r.recording.cpu for r in routed])
    return _section(h, baselines, routed)


async def _record(
    h: Harness, recorder: asyncpg.Pool, facts: list[Fact]
) -> tuple[Paced[float], CpuUse]:
    async def one(fact: Fact) -> float:
        async with recorder.acquire() as conn, conn.transaction():
            await raise_alert(
                conn,
                MONEY_EVENT_PARKED,
                dedup_key=dedup_key(fact),
                summary=f"payments of {fact.merchant} are being dead-lettered",
                details={"merchant_id": fact.merchant, "partner_id": h.stack.partner_id},
            )
        return time.time()

    meter = CpuMeter(h.stack.pids())
    with meter.measure() as measuring:
        paced = await open_loop(facts, h.plan.storm_rate, one, grace=h.plan.grace)
    return paced, measuring.use


def _recording(paced: Paced[float], cpu: CpuUse) -> Recording:
    finished = [o.latency for o in paced.outcomes if o.finished]
    return Recording(len(paced.outcomes), Latency.of(finished), paced.censored, cpu)


async def _baseline(h: Harness, recorder: asyncpg.Pool, run: int) -> Recording:
    tag = f"b{run}_{uuid.uuid4().hex[:6]}"
    facts = storm(tag, _count(h), SEED + run)
    paced, cpu = await _record(h, recorder, facts)
    # Nothing routed them; resolved now, the relay of the next worker leaves them alone.
    await h.pool.execute(
        "UPDATE alerts SET status = 'resolved', resolved_at = now(), resolved_by = 'bench'"
        " WHERE dedup_key LIKE $1 AND group_id IS NULL",
        f"{MONEY_EVENT_PARKED.name}:{tag}_%",
    )
    return _recording(paced, cpu)


async def _warm_up(h: Harness, recorder: asyncpg.Pool, sink: OncallSink) -> None:
    """One alert routed and paged on the new worker, so the storm meets warm caches."""
    fact = Fact(0, f"warm_{uuid.uuid4().hex[:6]}")
    slack_before = len(_slack_posts(sink))
    async with recorder.acquire() as conn, conn.transaction():
        await raise_alert(
            conn,
            MONEY_EVENT_PARKED,
            dedup_key=dedup_key(fact),
            summary="warm-up",
            details={"merchant_id": fact.merchant},
        )

    async def routed() -> str | None:
        group: str | None = await h.pool.fetchval(
            "SELECT group_id FROM alerts WHERE dedup_key = $1", dedup_key(fact)
        )
        return group

    group_id = await _wait(routed, PAGE_TIMEOUT, "the warm-up alert to be routed")

    async def notified() -> bool:
        paged = pagerduty_dedup_key(group_id) in _triggers(sink)
        return paged and len(_slack_posts(sink)) > slack_before

    await _wait(notified, PAGE_TIMEOUT, "the warm-up page and Slack message")


async def _routed(h: Harness, recorder: asyncpg.Pool, sink: OncallSink, run: int) -> Routed:
    tag = f"r{run}_{uuid.uuid4().hex[:6]}"
    facts = storm(tag, _count(h), SEED + run)
    slack_before = len(_slack_posts(sink))
    paced, cpu = await _record(h, recorder, facts)
    first_due: dict[str, float] = {}
    for fact in facts:
        first_due.setdefault(fact.merchant, paced.first_call_wall + fact.index / h.plan.storm_rate)

    async def grouped() -> dict[str, str] | None:
        rows = await h.pool.fetch(
            "SELECT details->>'merchant_id' AS merchant, group_id FROM alerts"
            " WHERE dedup_key LIKE $1",
            f"{MONEY_EVENT_PARKED.name}:{tag}_%",
        )
        found = {row["merchant"]: row["group_id"] for row in rows if row["group_id"]}
        return found if len(found) == len(first_due) else None

    groups = await _wait(grouped, PAGE_TIMEOUT, "every key to be routed")

    async def all_paged() -> bool:
        return set(map(pagerduty_dedup_key, groups.values())) <= set(_triggers(sink))

    await _wait(all_paged, PAGE_TIMEOUT, f"{len(groups)} pages")
    workflows: list[str] = [
        row["workflow_id"]
        for row in await h.pool.fetch(
            "SELECT workflow_id FROM alert_groups WHERE id = ANY($1::text[])",
            list(groups.values()),
        )
    ]
    costs = await _settled_costs(h.temporal, workflows)
    triggers = _triggers(sink)
    per_group = [len(triggers.get(pagerduty_dedup_key(g), [])) for g in groups.values()]
    latencies = [
        triggers[pagerduty_dedup_key(group_id)][0] - first_due[merchant]
        for merchant, group_id in groups.items()
    ]
    occurrences = await h.pool.fetch(
        "SELECT group_id, sum(occurrences) AS n FROM alerts WHERE group_id = ANY($1::text[])"
        " GROUP BY group_id",
        list(groups.values()),
    )
    breakdown: Counter[str] = Counter()
    for cost in costs:
        breakdown.update(cost.breakdown)
    actions = [cost.actions for cost in costs]
    facts_per_group = [int(row["n"]) for row in occurrences]
    return Routed(
        recording=_recording(paced, cpu),
        groups=len(groups),
        pages=sum(per_group),
        groups_not_paged_once=sum(n != 1 for n in per_group),
        repeat_pages=sum(max(0, n - 1) for n in per_group),
        slack_posts=len(_slack_posts(sink)) - slack_before,
        page_latency=Latency.of(latencies),
        actions=sum(actions),
        actions_per_group=(min(actions), max(actions)),
        facts_per_group=(min(facts_per_group), max(facts_per_group)),
        repeat_actions=breakdown["signal received"]
        + breakdown["update"]
        + breakdown["workflow started"]
        - len(groups),
        breakdown=breakdown,
    )


async def _settled_costs(client: Client, workflow_ids: list[str]) -> list[HistoryCost]:
    """Each escalation's cost once it has sent its page and waits on its next timer."""
    limit = asyncio.Semaphore(HISTORY_CONCURRENCY)

    async def one(workflow_id: str) -> HistoryCost:
        handle = client.get_workflow_handle(workflow_id)

        async def settled() -> HistoryCost | None:
            async with limit:
                history = await handle.fetch_history()
            kinds = [event.event_type for event in history.events]
            if EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED not in kinds:
                return None
            after = kinds[kinds.index(EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED) :]
            return HistoryCost.of(history) if EventType.EVENT_TYPE_TIMER_STARTED in after else None

        return await _wait(settled, PAGE_TIMEOUT, f"{workflow_id} to wait on its next timer")

    return list(await asyncio.gather(*map(one, workflow_ids)))


def _triggers(sink: OncallSink) -> dict[str, list[float]]:
    """When each PagerDuty trigger the sink accepted arrived, by dedup key."""
    found: dict[str, list[float]] = {}
    for call in sink.calls("pagerduty"):
        if call["status"] == 202 and call["body"].get("event_action") == "trigger":
            found.setdefault(call["body"]["dedup_key"], []).append(call["at"])
    return found


def _slack_posts(sink: OncallSink) -> list[float]:
    return [
        call["at"]
        for call in sink.calls("slack")
        if call["method"] == "chat.postMessage" and call["status"] == 200
    ]


def _count(h: Harness) -> int:
    return int(h.plan.storm_rate * h.plan.storm_seconds)


async def _wait(probe: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(POLL)


def _cpu_ms_per_fact(recording: Recording, process: str | None = None) -> float:
    """CPU milliseconds per fact of one process, or of every process of the stack."""
    seconds = recording.cpu.seconds
    if process is None:
        used = sum(value for name, value in seconds.items() if name != OTHERS)
    else:
        used = seconds.get(process, 0.0)
    return 1000 * used / recording.facts if recording.facts else math.nan


def _section(h: Harness, baselines: list[Recording], routed: list[Routed]) -> Section:
    facts = _count(h)
    plan = h.plan

    def runs(figure: Callable[[Routed], float]) -> list[float]:
        return [float(figure(r)) for r in routed]

    def recorded(figure: Callable[[Recording], float]) -> tuple[list[float], list[float]]:
        return [figure(r.recording) for r in routed], [figure(b) for b in baselines]

    latency_p50 = recorded(lambda r: r.latency.p50_ms)
    latency_p99 = recorded(lambda r: r.latency.p99_ms)
    cpu_all = recorded(_cpu_ms_per_fact)
    cpu_postgres = recorded(lambda r: _cpu_ms_per_fact(r, "postgres"))
    censored = sum(r.recording.censored for r in routed) + sum(b.censored for b in baselines)
    rows = [
        Row("Alert groups (one escalation workflow each)", "", runs(lambda r: r.groups), []),
        Row("Pages (PagerDuty triggers accepted, 202)", "", runs(lambda r: r.pages), []),
        Row(
            "Groups not paged exactly once",
            "",
            runs(lambda r: r.groups_not_paged_once),
            [],
            Target("<=", 0),
        ),
        Row(
            "Pages after a key's first fact (repeats)",
            "",
            runs(lambda r: r.repeat_pages),
            [],
            Target("<=", 0),
        ),
        Row("Slack messages posted (chat.postMessage)", "", runs(lambda r: r.slack_posts), []),
        Row("Temporal actions per 1,000 facts", "", runs(lambda r: 1000 * r.actions / facts), []),
        Row("Temporal actions per group", "", runs(lambda r: r.actions / r.groups), []),
        Row(
            "Temporal actions caused by repeats (signals, updates, extra starts)",
            "",
            runs(lambda r: r.repeat_actions),
            [],
            Target("<=", 0),
        ),
        Row(
            "Fact→page p50 (first fact of each key)",
            "ms",
            runs(lambda r: r.page_latency.p50_ms),
            [],
        ),
        Row(
            "Fact→page p99 (first fact of each key)",
            "ms",
            runs(lambda r: r.page_latency.p99_ms),
            [],
            Target("<=", PAGE_P99_TARGET_MS, "ms"),
        ),
        Row("Fact recorded (due→commit) p50", "ms", *latency_p50),
        Row("Fact recorded (due→commit) p99", "ms", *latency_p99),
        Row("CPU per fact, all stack processes", "ms", *cpu_all),
        Row("CPU per fact, Postgres", "ms", *cpu_postgres),
    ]
    last = routed[-1]
    notes = [
        f"{plan.storm_repeats} run{'s' if plan.storm_repeats != 1 else ''} (medians shown), "
        f"each {facts:,} facts paced open loop at {plan.storm_rate:.1f}/s "
        f"({plan.storm_seconds:g} s), one `raise_alert` per transaction, "
        f"{RECORDING_CONNECTIONS} connections; key k opens at fact k * {facts // KEYS}, the "
        f"other facts repeat an open key at random (seed {SEED} + run). Policy: critical "
        "alerts grouped by kind and merchant, `group_wait` 0, step 0 notifies PagerDuty then "
        "Slack, `repeat_interval` 1 h.",
        "Fact→page: the sink's receipt of a group's PagerDuty trigger minus the due time of its "
        "key's first fact (open loop, so a stall counts against every fact behind it). A repeat "
        "of an open key never pages: the pages row counts every trigger per group.",
        f"Temporal actions: from the {last.groups} escalation histories of each run, read once "
        f"each had sent its page and started its next timer; {ACTION_RULES}. Last run: "
        + ", ".join(f"{name} {count}" for name, count in sorted(last.breakdown.items()))
        + f"; actions per group {last.actions_per_group[0]} to {last.actions_per_group[1]} while "
        f"facts per group ranged {last.facts_per_group[0]} to {last.facts_per_group[1]}.",
        "Recording cost: due→commit latency of every fact, and CPU of the stack's processes "
        "(Postgres, Temporal, api, worker, this process…) per fact, over the storm only; with "
        "routing the worker's relay and escalations and the Temporal server are included.",
    ]
    if censored:
        notes.append(f"⚠ {censored} facts were not committed within the grace period.")
    return Section(
        title=f"Alert storm — {facts:,} failure facts over {KEYS} dedup keys at "
        f"{plan.storm_rate * 60:,.0f}/min",
        baseline="the same facts recorded with the alert relay not running (worker stopped)",
        rows=rows,
        notes=notes,
        subject="Routed",
    )
