"""The fan-out results: the three systems side by side (the generic section has one baseline
column), with targets on Switchboard's figures and its ratios to each baseline."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.fanout.clients import CLIENT_PROCESSES
from benchmarks.fanout.plan import LABELS, SHAPE_LABELS, SHAPES, START_RATE, FanoutPlan
from benchmarks.fanout.session import Run
from benchmarks.report import (
    Row,
    Section,
    Target,
    format_number,
    format_ratio,
    format_series,
    markdown_table,
)
from benchmarks.stats import median, ratio

__all__ = ["FanoutSection"]


class FanoutSection(Section):
    """The three systems side by side (the generic section has one baseline column)."""

    def __init__(
        self,
        plan: FanoutPlan,
        results: dict[tuple[str, str], list[Run]],
        systems: list[str],
        node_missing: str | None,
    ) -> None:
        super().__init__(
            title="Gateway fan-out — Redis publish to WebSocket client",
            baseline="python-socketio with `AsyncRedisManager`, served by uvicorn; Node "
            "Socket.IO 4.8 with `@socket.io/redis-adapter` 8.3 (node-redis 4.7)",
            rows=[],
        )
        self.plan = plan
        self.results = results
        self.systems = systems
        self.node_missing = node_missing
        for shape in SHAPES:
            ours = results[("switchboard", shape)]
            theirs = results[("socketio", shape)]
            self.rows.append(
                Row(
                    f"{SHAPE_LABELS[shape]}: deliveries/s",
                    "/s",
                    [r.deliveries for r in ours],
                    [r.deliveries for r in theirs],
                    Target(">=", 4, on_ratio=True),
                )
            )

    def render(self) -> str:
        systems = self.systems
        header = [
            "Figure",
            *(LABELS[s] for s in systems),
            *(f"vs {LABELS[s]}" for s in systems[1:]),
            "Target",
            "Runs (" + ", ".join(LABELS[s] for s in systems) + ")",
        ]
        rows = []
        for shape in SHAPES:
            label = SHAPE_LABELS[shape]
            figures: list[tuple[str, str, str, Any, Target | None, dict[str, Target]]] = [
                (
                    "events/s in at saturation",
                    "/s",
                    "events_in",
                    None,
                    Target(">=", 500_000 / 60, "/s") if shape == "500x2" else None,
                    {},
                ),
                (
                    "deliveries/s out at saturation",
                    "/s",
                    "deliveries",
                    None,
                    None,
                    {
                        "socketio": Target(">=", 4, on_ratio=True),
                        "node": Target(">=", 1, on_ratio=True),
                    },
                ),
                ("highest offered rate delivered in full", "/s", "sustained", None, None, {}),
                ("publish→client p50 at half saturation", "ms", "p50_ms", None, None, {}),
                (
                    "publish→client p99 at half saturation",
                    "ms",
                    "p99_ms",
                    None,
                    Target("<=", 50, "ms"),
                    {},
                ),
                ("half-saturation rate (events/s)", "/s", "half_rate", None, None, {}),
                ("server CPU at saturation (cores)", "", "server_cpu", None, None, {}),
                ("client processes' CPU at saturation (cores)", "", "client_cpu", None, None, {}),
            ]
            for name, unit, attr, _, target, ratio_targets in figures:
                values = {
                    s: [float(getattr(r, attr)) for r in self.results[(s, shape)]] for s in systems
                }
                medians = {s: median(values[s]) for s in systems}
                verdicts = []
                if target is not None:
                    met = target.met(medians["switchboard"], math.nan)
                    verdicts.append(f"{target} {'—' if met is None else '✅' if met else '❌'}")
                for other, ratio_target in ratio_targets.items():
                    if other in systems:
                        met = ratio_target.met(
                            math.nan, ratio(medians["switchboard"], medians[other])
                        )
                        mark = "—" if met is None else "✅" if met else "❌"
                        verdicts.append(f"{ratio_target} {LABELS[other]} {mark}")
                rows.append(
                    [
                        f"{label}: {name}",
                        *(format_number(medians[s], unit) for s in systems),
                        *(
                            format_ratio(ratio(medians["switchboard"], medians[s]))
                            for s in systems[1:]
                        ),
                        "; ".join(verdicts),
                        " / ".join(format_series(values[s]) for s in systems),
                    ]
                )
        lost = {
            k: sum(r.lost for r in v) for k, v in self.results.items() if any(r.lost for r in v)
        }
        notes = [
            f"{self.plan.repeats} run(s) per figure (medians; each run is a fresh server process);"
            f" saturation steps of {self.plan.step_seconds:g} s (x1.5 from"
            f" {START_RATE['500x2']:,.0f}/s and {START_RATE['1x100']:,.0f}/s, later runs x1.2"
            " from 0.6x the previous saturation), each drained completely before the next;"
            f" latency over {self.plan.latency_seconds:g} s at half saturation, every"
            " 4th delivery sampled.",
            f"Clients in {CLIENT_PROCESSES} separate processes (a minimal RFC 6455 frame counter,"
            " so the client side costs far less than the servers); publisher in the benchmark"
            " process, writing pre-built PUBLISH commands straight to the Redis socket in 5 ms"
            " batches. Everything on 127.0.0.1.",
            "Saturation: the most deliveries/s the clients received during any step; a step"
            " is delivered in full when every event arrived within max(0.5 s, step/4) of its end.",
        ]
        if lost:
            notes.append(f"Lost deliveries (never arrived): {lost}.")
        if self.node_missing is not None:
            notes.append(f"Node Socket.IO not measured: {self.node_missing}.")
        lines = [f"## {self.title}", "", f"Baselines: {self.baseline}.", ""]
        lines += markdown_table(header, rows)
        lines += [""] + [f"- {note}" for note in notes]
        return "\n".join(lines).rstrip() + "\n"
