"""The development on-call sink: a real HTTP server that answers the few Slack and PagerDuty calls
Switchboard makes, as the real services do, and keeps what it received.

* Slack Web API under ``/slack/api/``: ``chat.postMessage`` (with ``thread_ts`` for replies) and
  ``chat.update``, bearer-token auth, ``{"ok": false, "error": …}`` answers as Slack gives them.
* PagerDuty Events API v2 at ``/pagerduty/v2/enqueue``: ``trigger`` / ``acknowledge`` /
  ``resolve`` with a 32-character ``routing_key``; 202 with the ``dedup_key``; one incident per
  open ``dedup_key`` (a trigger while it is open is deduplicated, as PagerDuty does; after a
  resolve a trigger opens a new one); 400 for an invalid event.

``switchboard dev`` runs it (``SWITCHBOARD_ONCALL_SINK_PORT``) and points Slack and PagerDuty at it,
so a newcomer sees every page (``switchboard pages list``); the tests use it as their Slack and
PagerDuty. ``GET /_calls`` and ``GET /_incidents`` show what arrived; ``POST /_faults`` makes the
next calls to one service fail (``{"service": "pagerduty", "status": 500, "times": 3}``, with
``retry_after`` for a 429).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.settings import DEV_PAGERDUTY_ROUTING_KEY, DEV_SLACK_TOKEN
from devstack.threaded import ThreadedServer

__all__ = ["OncallSink", "SinkState"]

SLACK_CHANNEL_ID = "C0SINK0001"
_SEVERITIES = {"critical", "error", "warning", "info"}


@dataclass
class SinkState:
    """What the sink received and how it is told to behave."""

    slack_token: str = DEV_SLACK_TOKEN
    routing_key: str = DEV_PAGERDUTY_ROUTING_KEY
    calls: list[dict[str, Any]] = field(default_factory=list)
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, service: str, method: str, body: dict[str, Any], status: int) -> None:
        with self.lock:
            self.calls.append(
                {
                    "service": service,
                    "method": method,
                    "status": status,
                    "at": time.time(),
                    "body": body,
                }
            )

    def fault(self, service: str) -> dict[str, Any] | None:
        """The fault to answer this call with, if one is armed for ``service``."""
        with self.lock:
            armed = self.faults.get(service)
            if not armed or armed["times"] <= 0:
                return None
            armed["times"] -= 1
            return dict(armed)


def _app(state: SinkState) -> Starlette:
    async def slack(request: Request) -> Response:
        method = request.path_params["method"]
        body = await _body(request)
        if (armed := state.fault("slack")) is not None:
            state.record("slack", method, body, armed["status"])
            headers = {"Retry-After": str(armed.get("retry_after", 1))}
            return JSONResponse({"ok": False, "error": "ratelimited"}, armed["status"], headers)
        if request.headers.get("authorization") != f"Bearer {state.slack_token}":
            state.record("slack", method, body, 200)
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        if method not in ("chat.postMessage", "chat.update"):
            state.record("slack", method, body, 200)
            return JSONResponse({"ok": False, "error": "unknown_method"})
        if not body.get("channel") or not (body.get("text") or body.get("blocks")):
            state.record("slack", method, body, 200)
            return JSONResponse({"ok": False, "error": "no_text"})
        if method == "chat.update":
            if not body.get("ts"):
                state.record("slack", method, body, 200)
                return JSONResponse({"ok": False, "error": "message_not_found"})
            ts = str(body["ts"])
        else:
            with state.lock:
                state.messages += 1
                ts = f"{int(time.time())}.{state.messages:06d}"
        state.record("slack", method, body, 200)
        return JSONResponse(
            {
                "ok": True,
                "channel": SLACK_CHANNEL_ID,
                "ts": ts,
                "message": {"text": body.get("text")},
            }
        )

    async def pagerduty(request: Request) -> Response:
        body = await _body(request)
        if (armed := state.fault("pagerduty")) is not None:
            state.record("pagerduty", "enqueue", body, armed["status"])
            headers = {"Retry-After": str(armed.get("retry_after", 1))}
            return JSONResponse(
                {"status": "throttled" if armed["status"] == 429 else "error"},
                armed["status"],
                headers,
            )
        problem = _invalid_event(body, state.routing_key)
        if problem:
            state.record("pagerduty", "enqueue", body, 400)
            return JSONResponse(
                {
                    "status": "invalid event",
                    "message": "Event object is invalid",
                    "errors": [problem],
                },
                400,
            )
        action = body["event_action"]
        dedup_key = body.get("dedup_key") or f"sink-{len(state.incidents) + 1}"
        with state.lock:
            incident = state.incidents.get(dedup_key)
            if action == "trigger" and (incident is None or incident["status"] == "resolved"):
                state.incidents[dedup_key] = {
                    "dedup_key": dedup_key,
                    "status": "triggered",
                    "summary": body["payload"]["summary"],
                    "severity": body["payload"]["severity"],
                    "triggers": 1,
                    "opened_at": time.time(),
                }
            elif action == "trigger" and incident is not None:
                incident["triggers"] += 1
            elif incident is not None and incident["status"] != "resolved":
                incident["status"] = "acknowledged" if action == "acknowledge" else "resolved"
        state.record("pagerduty", "enqueue", body, 202)
        return JSONResponse(
            {"status": "success", "message": "Event processed", "dedup_key": dedup_key}, 202
        )

    async def calls(_: Request) -> Response:
        with state.lock:
            return JSONResponse(list(state.calls))

    async def incidents(_: Request) -> Response:
        with state.lock:
            return JSONResponse(list(state.incidents.values()))

    async def faults(request: Request) -> Response:
        body = await request.json()
        with state.lock:
            state.faults[body["service"]] = {
                "status": int(body["status"]),
                "times": int(body.get("times", 1)),
                "retry_after": int(body.get("retry_after", 1)),
            }
        return JSONResponse({"armed": body})

    return Starlette(
        routes=[
            Route("/slack/api/{method}", slack, methods=["POST"]),
            Route("/pagerduty/v2/enqueue", pagerduty, methods=["POST"]),
            Route("/_calls", calls),
            Route("/_incidents", incidents),
            Route("/_faults", faults, methods=["POST"]),
        ]
    )


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        with contextlib.suppress(ValueError):
            parsed = json.loads(raw)
            return parsed if isinstance(parsed, dict) else {}
        return {}
    fields: dict[str, Any] = dict(parse_qsl(raw.decode("utf-8", "replace")))
    for name in ("blocks", "attachments"):
        if isinstance(fields.get(name), str):
            with contextlib.suppress(ValueError):
                fields[name] = json.loads(fields[name])
    return fields


def _invalid_event(body: dict[str, Any], routing_key: str) -> str | None:
    """Why PagerDuty would refuse this event (400), or None."""
    if body.get("routing_key") != routing_key:
        return "'routing_key' is invalid"
    action = body.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        return "'event_action' is invalid"
    dedup_key = body.get("dedup_key")
    if dedup_key is not None and (not isinstance(dedup_key, str) or len(dedup_key) > 255):
        return "'dedup_key' must be a string of at most 255 characters"
    if action != "trigger":
        return None if dedup_key else "'dedup_key' is required for acknowledge and resolve"
    payload = body.get("payload")
    if not isinstance(payload, dict):
        return "'payload' is missing"
    if not payload.get("summary") or len(str(payload["summary"])) > 1024:
        return "'payload.summary' is missing or longer than 1024 characters"
    if not payload.get("source"):
        return "'payload.source' is missing"
    if payload.get("severity") not in _SEVERITIES:
        return "'payload.severity' must be critical, error, warning or info"
    return None


class OncallSink(ThreadedServer):
    """The sink served in a background thread on ``host:port`` (a context manager)."""

    def __init__(self, port: int, host: str = "127.0.0.1", state: SinkState | None = None) -> None:
        self.state = state or SinkState()
        super().__init__(_app(self.state), port, host, name="on-call sink")

    def calls(self, service: str | None = None) -> list[dict[str, Any]]:
        with self.state.lock:
            return [c for c in self.state.calls if service is None or c["service"] == service]

    def arm(self, service: str, status: int, times: int, retry_after: int = 1) -> None:
        """Make the next ``times`` calls to ``service`` answer ``status``."""
        with self.state.lock:
            self.state.faults[service] = {
                "status": status,
                "times": times,
                "retry_after": retry_after,
            }
