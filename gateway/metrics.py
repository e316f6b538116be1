"""Prometheus metrics of the gateway process, served at ``/metrics`` on the gateway's port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CONNECTIONS",
    "DELIVERIES",
    "DISCONNECTS",
    "EVENTS_DROPPED",
    "EVENTS_IN",
    "GAP_FILLS",
    "HANDSHAKES_REFUSED",
    "LAG",
    "LAG_SAMPLE_EVERY",
    "REDIS_CONNECTED",
    "REPLAYED",
    "RESUMES",
    "SUBSCRIPTIONS",
]

CONNECTIONS = Gauge("switchboard_gateway_connections", "Authenticated WebSocket connections.")
SUBSCRIPTIONS = Gauge(
    "switchboard_gateway_subscriptions", "Merchant feeds (one Redis channel each) on this instance."
)
EVENTS_IN = Counter(
    "switchboard_gateway_events_in_total",
    "Merchant events entering the fan-out, by source.",
    ["source"],
)
EVENTS_DROPPED = Counter(
    "switchboard_gateway_events_dropped_total",
    "Messages from Redis not fanned out, by reason (unreadable, other_topic: a payload"
    " naming another topic than its channel's).",
    ["reason"],
)
DELIVERIES = Counter(
    "switchboard_gateway_deliveries_total", "Event messages written to clients (live fan-out)."
)
REPLAYED = Counter(
    "switchboard_gateway_replayed_events_total",
    "Events replayed from Postgres to resuming clients.",
)
RESUMES = Counter("switchboard_gateway_resumes_total", "Clients that resumed from a seq.")
GAP_FILLS = Counter(
    "switchboard_gateway_gap_fills_total", "Reads from Postgres to fill a gap in a live feed."
)
DISCONNECTS = Counter(
    "switchboard_gateway_disconnects_total",
    "Connections the gateway closed, by reason (slow, auth, protocol, flood, cap, expired,"
    " resume, replay, gap, shutdown).",
    ["reason"],
)
HANDSHAKES_REFUSED = Counter(
    "switchboard_gateway_handshakes_refused_total",
    "Handshakes refused before 101, by reason (origin, rate, capacity).",
    ["reason"],
)
REDIS_CONNECTED = Gauge(
    "switchboard_gateway_redis_connected", "1 while the Redis subscription connection is up."
)
LAG_SAMPLE_EVERY = 16
LAG = Histogram(
    "switchboard_gateway_lag_seconds",
    "Time from an event's commit (occurred_at) to its fan-out, for one live event in 16.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
