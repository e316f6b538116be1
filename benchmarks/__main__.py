"""``python -m benchmarks`` (``./run bench``): run every measurement, print and save the table.

``--quick`` is a smoke run of about two minutes (less on an idle machine); the default full run
takes about 30 minutes (outbound deliveries about 4 of them, the alert storm about 7, the live
feed about 1, exchange claims and contended debits about 3 each, exchange transitions to their
watching clients about 2.5).
``--temporal memory`` runs Temporal without its SQLite file, ``both`` reports both setups.

Order matters: the pipeline is measured first, on an empty inbox, then the live feed through the
gateway (:mod:`benchmarks.live`, same inbox state), then the outbound
deliveries (which restart the worker; see :mod:`benchmarks.deliveries`), the alert storm (which
stops and restarts it; :mod:`benchmarks.oncall`), exchange claims (:mod:`benchmarks.claims`) and
contended wallet debits (:mod:`benchmarks.debits`), escrows end to end (which restart the
worker; :mod:`benchmarks.escrows`), exchange transitions to their watching clients through the
gateway (:mod:`benchmarks.desk_live`); the load-generator check
touches only the bare app; the gateway fan-out (its own servers on the stack's Redis) runs before
the ingress, which runs last, because at 500/s it records more webhooks than the worker drains,
and that backlog is what "worker draining" means for them (a fan-out measured after it shared
the machine with the draining worker and Temporal: p99 165 ms against 10.5 ms alone).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import uvloop

from benchmarks.claims import measure_claims
from benchmarks.debits import measure_debits
from benchmarks.deliveries import measure_deliveries
from benchmarks.desk_live import measure_desk_live
from benchmarks.escrows import measure_escrows
from benchmarks.fanout import fanout_stores, measure_fanout
from benchmarks.harness import open_harness, progress
from benchmarks.ingress import measure_ingress, measure_load_generator
from benchmarks.live import measure_live
from benchmarks.oncall import measure_oncall
from benchmarks.pipeline import measure_pipeline
from benchmarks.plan import FULL, QUICK, Plan
from benchmarks.report import Section, render
from benchmarks.stack import OTHERS, REPO, BenchStack, CpuUse

RESULTS = Path(__file__).resolve().parent / "results" / "latest.md"
NOISY_OTHERS_PERCENT = 25.0
TEMPORAL_SETUPS = {"sqlite": [False], "memory": [True], "both": [False, True]}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    if args.only == "fanout":
        text = _run_fanout_only(plan)
    else:
        text = "\n".join(
            _run(plan, in_memory, args.only) for in_memory in TEMPORAL_SETUPS[args.temporal]
        )
    # A partial run must not replace the full results the README quotes.
    output = args.output or (
        RESULTS if args.only == "all" else RESULTS.with_name(f"{args.only}.md")
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(text)
    print(f"Written to {output} in {time.monotonic() - started:.0f} s.", file=sys.stderr)
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (≤ 60 s)")
    parser.add_argument(
        "--temporal",
        choices=sorted(TEMPORAL_SETUPS),
        default="sqlite",
        help="Temporal dev server persistence: its SQLite file like `switchboard dev` (default), "
        "in memory, or both one after the other",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"default: {RESULTS}, or results/<only>.md for a partial run",
    )
    parser.add_argument(
        "--only",
        choices=[
            "all",
            "fanout",
            "deliveries",
            "live",
            "oncall",
            "claims",
            "debits",
            "escrows",
            "desk-live",
        ],
        default="all",
        help="`fanout`: only the gateway fan-out benchmark (embedded Postgres and Redis only);"
        " `deliveries`: only the outbound delivery benchmark; `live`: only webhook→WebSocket"
        " client latency through the whole stack and the gateway; `oncall`: only the alert storm"
        " (routing to the on-call sink beside recording alone); `claims`: only exchange claims, 50"
        " claimers per request through the api beside a bare SELECT … FOR UPDATE; `debits`: only"
        " 200 concurrent debits of one wallet through the ledger beside a bare UPDATE; `escrows`:"
        " only escrows funded and released end to end beside a no-op workflow; `desk-live`:"
        " only exchange transitions (create, claim, processing, completed) at a steady rate to"
        " desk and request clients through the gateway, beside a bare Redis PUBLISH → subscriber",
    )
    return parser.parse_args(argv)


def _run(plan: Plan, temporal_in_memory: bool, only: str = "all") -> str:
    """Start a stack, measure everything on it, stop it; returns the report."""
    started = time.monotonic()
    load_before = os.getloadavg()
    gateway = only in ("all", "live", "desk-live")
    stack = BenchStack(temporal_in_memory=temporal_in_memory, gateway=gateway)
    with progress(
        "starting Postgres, Redis, Temporal, api, worker, bare app"
        + (", gateway" if gateway else "")
    ):
        stack.start()
    try:
        sections, cpu = uvloop.run(_measure(stack, plan, only))
    finally:
        with progress("stopping"):
            stack.stop()
    elapsed = time.monotonic() - started
    repeats = {"live": plan.live_repeats, "oncall": plan.storm_repeats}.get(only, plan.repeats)
    notes = _header_notes(plan, repeats, temporal_in_memory, cpu, load_before, elapsed)
    setup = "in-memory Temporal" if temporal_in_memory else "Temporal with its SQLite file"
    return render(f"Switchboard benchmarks — {plan.name} run, {setup}", notes, sections, cpu)


async def _measure(
    stack: BenchStack, plan: Plan, only: str
) -> tuple[list[Section], dict[str, CpuUse]]:
    if only == "deliveries":
        async with open_harness(stack, plan) as h:
            return await measure_deliveries(h), h.phase_cpu
    if only == "live":
        async with open_harness(stack, plan) as h:
            return [await measure_live(h)], h.phase_cpu
    if only == "oncall":
        async with open_harness(stack, plan) as h:
            return [await measure_oncall(h)], h.phase_cpu
    if only == "claims":
        async with open_harness(stack, plan) as h:
            return [await measure_claims(h)], h.phase_cpu
    if only == "debits":
        async with open_harness(stack, plan) as h:
            return [await measure_debits(h)], h.phase_cpu
    if only == "escrows":
        async with open_harness(stack, plan) as h:
            return [await measure_escrows(h)], h.phase_cpu
    if only == "desk-live":
        async with open_harness(stack, plan) as h:
            return [await measure_desk_live(h)], h.phase_cpu
    async with open_harness(stack, plan) as h:
        pipeline = await measure_pipeline(h)
        live = await measure_live(h)
        deliveries = await measure_deliveries(h)
        oncall = await measure_oncall(h)
        claims = await measure_claims(h)
        debits = await measure_debits(h)
        escrows = await measure_escrows(h)
        desk_live = await measure_desk_live(h)
        load_generator = await measure_load_generator(h)
        with progress("gateway fan-out against python-socketio"):
            fanout = await measure_fanout(stack.postgres.url, stack.redis.url, plan.name == "quick")
        ingress = await measure_ingress(h)
    sections = [ingress, pipeline, live, *deliveries, oncall, claims, debits, escrows, desk_live]
    sections.append(load_generator)
    return [*sections, fanout], h.phase_cpu


def _run_fanout_only(plan: Plan) -> str:
    started = time.monotonic()
    load_before = os.getloadavg()
    with fanout_stores() as (postgres_url, redis_url):
        section = uvloop.run(measure_fanout(postgres_url, redis_url, plan.name == "quick"))
    notes = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {_commit()}, Python "
        f"{platform.python_version()}, {os.cpu_count()} cores; {plan.name} plan; this run took "
        f"{time.monotonic() - started:.0f} s.",
        f"Load average (1 min) before: {load_before[0]:.1f}, after: {os.getloadavg()[0]:.1f}.",
    ]
    return render(
        f"Switchboard benchmarks — gateway fan-out only, {plan.name} run", notes, [section], {}
    )


def _header_notes(
    plan: Plan,
    repeats: int,
    in_memory: bool,
    cpu: dict[str, CpuUse],
    load_before: tuple[float, float, float],
    elapsed: float,
) -> list[str]:
    temporal = (
        "in memory"
        if in_memory
        else "with its SQLite file (WAL) in the temp dir, as `switchboard dev` runs it"
    )
    notes = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {_commit()}, Python "
        f"{platform.python_version()}, {os.cpu_count()} cores; {plan.name} plan, "
        f"{repeats} run{'s' if repeats != 1 else ''} per figure (medians shown); this run took "
        f"{elapsed:.0f} s.",
        f"Embedded Postgres, Redis and Temporal dev server ({temporal}) on free 127.0.0.1 "
        "ports; api (`python -m cli.main api`) and worker (`python worker.py`) as separate "
        "processes (and the gateway, `python -m cli.main gateway`, for the live feed); load from "
        "the benchmark process, pre-signed, over keep-alive connections.",
        f"Load average (1 min) before: {load_before[0]:.1f}, after: {os.getloadavg()[0]:.1f}.",
    ]
    others = CpuUse.total(list(cpu.values())).percent.get(OTHERS, 0.0)
    if others > NOISY_OTHERS_PERCENT:
        notes.append(
            f"⚠ Noisy: processes outside this benchmark used {others:.0f}% of a core on average "
            "while Switchboard was measured; treat the figures as rough."
        )
    return notes


def _commit() -> str:
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return found.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
