"""What the fan-out benchmark measures: the systems, the client shapes, the rates and the plans."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DRAIN_TIMEOUT",
    "FULL_FANOUT",
    "LABELS",
    "MAX_RATE",
    "MAX_STEPS",
    "QUICK_FANOUT",
    "SHAPES",
    "SHAPE_LABELS",
    "START_RATE",
    "SYSTEMS",
    "FanoutPlan",
]

SYSTEMS = ("switchboard", "socketio", "node")
LABELS = {"switchboard": "Switchboard", "socketio": "python-socketio", "node": "Node Socket.IO"}
SHAPES = {"500x2": (500, 2), "1x100": (1, 100)}
SHAPE_LABELS = {"500x2": "1,000 clients, 500 merchants x 2", "1x100": "100 clients, 1 merchant"}
START_RATE = {"500x2": 2_000.0, "1x100": 200.0}
"""First offered rate (events/s) of the first run's saturation search."""
MAX_RATE = {"500x2": 150_000.0, "1x100": 5_000.0}
MAX_STEPS = 12
DRAIN_TIMEOUT = 30.0


@dataclass(frozen=True)
class FanoutPlan:
    repeats: int
    step_seconds: float
    latency_seconds: float


QUICK_FANOUT = FanoutPlan(repeats=1, step_seconds=1.0, latency_seconds=2.0)
FULL_FANOUT = FanoutPlan(repeats=3, step_seconds=2.0, latency_seconds=4.0)
