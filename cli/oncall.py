"""Terminal commands for on-call: alerts and their escalations (clients of the operator API),
the policy file's check, and what the development Slack and PagerDuty sink received."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from cli.client import Json, call, emit, fail
from core.alert_policy import PolicyError, declared_kinds, load_policy
from core.settings import Settings

__all__ = ["alerts_app", "pages_app"]

alerts_app = typer.Typer(
    help="Alerts, their escalation (acknowledge, resolve), silences, and the policy file.",
    no_args_is_help=True,
)
pages_app = typer.Typer(
    help="What the development Slack and PagerDuty sink received.", no_args_is_help=True
)


@alerts_app.command("list")
def alerts_list(
    status: Annotated[str, typer.Option(help="open, resolved, or empty for all.")] = "open",
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    as_json: Json = False,
) -> None:
    """Alerts, newest first."""
    params: dict[str, Any] = {"status": status}
    if kind:
        params["kind"] = kind
    found = call(as_json, "GET", "/v1/alerts", params=params)
    table = Table("id", "severity", "kind", "summary", "count", "group", "last seen")
    for a in found:
        table.add_row(
            str(a["id"]),
            a["severity"],
            a["kind"],
            a["summary"],
            str(a["occurrences"]),
            a["group_id"] or "",
            a["last_seen_at"],
        )
    emit(as_json, found, table)


@alerts_app.command("show")
def alerts_show(alert_id: int, as_json: Json = False) -> None:
    """An alert's group and its timeline: raised, notified where, acknowledged, resolved."""
    emit(as_json, shown := call(as_json, "GET", f"/v1/alerts/{alert_id}"), _group_view(shown))


@alerts_app.command("ack")
def alerts_ack(alert_id: int, as_json: Json = False) -> None:
    """Acknowledge the alert's group: its escalation stops."""
    group = call(as_json, "POST", f"/v1/alerts/{alert_id}/acknowledge")
    emit(as_json, group, _group_view(group))


@alerts_app.command("resolve")
def alerts_resolve(
    alert_id: int,
    reason: Annotated[str, typer.Option(help="Why it is resolved.")] = "resolved by an operator",
    as_json: Json = False,
) -> None:
    """Resolve the alert's group and every alert in it (PagerDuty and Slack are told)."""
    group = call(as_json, "POST", f"/v1/alerts/{alert_id}/resolve", json={"reason": reason})
    emit(as_json, group, _group_view(group))


@alerts_app.command("silence")
def alerts_silence(
    matcher: Annotated[
        list[str],
        typer.Argument(help="label=value (kind, severity, partner_id…); * ends a prefix."),
    ],
    minutes: Annotated[int, typer.Option(help="How long.")] = 60,
    comment: Annotated[str, typer.Option(help="Why (shown to everyone on call).")] = "",
    as_json: Json = False,
) -> None:
    """Hold back notifications of matching alerts for a while."""
    matchers = {}
    for item in matcher:
        label, sep, value = item.partition("=")
        if not sep:
            fail(f"{item!r} is not label=value", as_json)
        matchers[label] = value
    body = {
        "matchers": matchers,
        "duration_seconds": minutes * 60,
        "comment": comment or "silenced from the command line",
    }
    silence = call(as_json, "POST", "/v1/silences", json=body)
    emit(as_json, silence, f"Silence {silence['id']} until {silence['ends_at']}")


@alerts_app.command("silences")
def alerts_silences(as_json: Json = False) -> None:
    """Active and future silences."""
    found = call(as_json, "GET", "/v1/silences")
    table = Table("id", "matchers", "from", "until", "by", "comment")
    for s in found:
        matchers = ", ".join(f"{k}={v}" for k, v in s["matchers"].items())
        table.add_row(
            str(s["id"]), matchers, s["starts_at"], s["ends_at"], s["created_by"], s["comment"]
        )
    emit(as_json, found, table)


@alerts_app.command("check-config")
def alerts_check_config(
    path: Annotated[
        str | None, typer.Argument(help="Default: SWITCHBOARD_ALERTING_POLICY.")
    ] = None,
    as_json: Json = False,
) -> None:
    """Validate the on-call policy file; a mistake is reported with its line."""
    file = (
        Settings().alerting_policy
        if path is None
        else Settings(alerting_policy=path).alerting_policy
    )
    try:
        policy = load_policy(file)
    except PolicyError as error:
        fail(str(error), as_json)
    routes = [route.name for route in policy.routes]
    emit(
        as_json,
        {"path": str(file), "valid": True, "routes": routes},
        f"{file}: valid ({len(routes)} routes: {', '.join(routes)})",
    )


@alerts_app.command("kinds")
def alerts_kinds(as_json: Json = False) -> None:
    """Every alert kind Switchboard can raise, with its default severity."""
    import importlib

    from core.alert_policy import DETECTORS

    for module in DETECTORS:
        importlib.import_module(module)
    kinds = [
        {"name": k.name, "severity": k.severity.value, "meaning": k.meaning}
        for k in sorted(declared_kinds().values(), key=lambda k: k.name)
    ]
    table = Table("kind", "severity", "meaning")
    for k in kinds:
        table.add_row(k["name"], k["severity"], k["meaning"])
    emit(as_json, kinds, table)


@pages_app.command("list")
def pages_list(
    limit: Annotated[int, typer.Option(help="The newest this many.")] = 50, as_json: Json = False
) -> None:
    """Slack messages and PagerDuty events the development sink received, newest first."""
    settings = Settings()
    url = f"http://127.0.0.1:{settings.oncall_sink_port}/_calls"
    try:
        calls = httpx.get(url, timeout=5).json()
    except (httpx.HTTPError, ValueError) as error:
        fail(f"no on-call sink at {url} (is `switchboard dev` running?): {error}", as_json)
    calls = list(reversed(calls))[:limit]
    table = Table("at", "service", "call", "status", "what")
    for c in calls:
        body = c["body"]
        if c["service"] == "slack":
            what = ("↳ " if body.get("thread_ts") else "") + str(body.get("text", ""))[:90]
        else:
            payload = body.get("payload") or {}
            action, key = body.get("event_action"), body.get("dedup_key", "")
            what = f"{action} {key} {payload.get('summary', '')}"[:90]
        table.add_row(
            datetime.fromtimestamp(c["at"]).strftime("%H:%M:%S"),
            c["service"],
            c["method"],
            str(c["status"]),
            what,
        )
    emit(as_json, calls, table)


def _group_view(group: dict[str, Any]) -> str:
    lines = [
        f"Group [bold]{group['id']}[/bold]  {group['severity']}  {group['status']}"
        f"  route {group['route']}",
        f"  {group['summary']}",
        f"  pages sent: {group['pages']}"
        + (f"  acknowledged by {group['acknowledged_by']}" if group["acknowledged_by"] else "")
        + (f"  resolved by {group['resolved_by']}" if group["resolved_by"] else ""),
    ]
    if group.get("workflow_url"):
        lines.append(f"  escalation: {group['workflow_url']}")
    lines += [
        f"  {entry['at']}  {entry['action']:<12} {entry['channel'] or '':<9} {entry['actor']}"
        + (f"  {entry['detail']}" if entry["detail"] else "")
        for entry in group["timeline"]
    ]
    return "\n".join(lines)
