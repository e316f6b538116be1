"""Prometheus metrics of Switchboard's own code (the Temporal SDK exports its own separately).

Defined once here so the api and the worker share names; each process exposes only the ones it
updates.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ACK_LATENCY",
    "DELIVERIES_DISPATCHED",
    "DELIVERY_ATTEMPTS",
    "DELIVERY_LATENCY",
    "EVENTS_APPLIED",
    "INBOX_DEPTH",
    "RELAY_LAG",
    "WEBHOOKS_RECEIVED",
    "WORKFLOWS_STARTED",
]

_FAST = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

WEBHOOKS_RECEIVED = Counter(
    "switchboard_webhooks_received_total",
    "Webhooks answered by the ingress, by HTTP status.",
    ["status"],
)
ACK_LATENCY = Histogram(
    "switchboard_ack_latency_seconds",
    "Time from request start to the ingress answer.",
    buckets=_FAST,
)
INBOX_DEPTH = Gauge(
    "switchboard_inbox_depth", "Recorded webhooks whose workflow has not been started yet."
)
RELAY_LAG = Histogram(
    "switchboard_relay_lag_seconds",
    "Time from a webhook being recorded to its workflow being started.",
    buckets=(*_FAST, 5.0, 10.0, 30.0, 60.0),
)
WORKFLOWS_STARTED = Counter(
    "switchboard_workflows_started_total", "Workflow starts by the relay, by result.", ["result"]
)
EVENTS_APPLIED = Counter(
    "switchboard_events_applied_total", "Ledger applications, by outcome.", ["outcome"]
)
DELIVERY_ATTEMPTS = Counter(
    "switchboard_delivery_attempts_total",
    "Outbound delivery attempts (webhooks and emails), by channel and verdict.",
    ["channel", "verdict"],
)
DELIVERY_LATENCY = Histogram(
    "switchboard_delivery_attempt_seconds",
    "Duration of one outbound delivery attempt (request sent until answer or failure).",
    ["channel"],
    buckets=(*_FAST, 5.0, 10.0, 30.0),
)
DELIVERIES_DISPATCHED = Counter(
    "switchboard_deliveries_dispatched_total",
    "Deliveries the delivery relay handed to their lanes, by result.",
    ["result"],
)
