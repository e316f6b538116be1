"""Terminal commands for outbound deliveries: merchant endpoints, deliveries with their attempt
logs and replays (clients of the operator API), and what the development stack's mail sink and
play endpoint caught."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from cli.client import Json, call, dev_only, emit, fail
from core.settings import Settings

if TYPE_CHECKING:
    from devstack.mailsink import CaughtMail

__all__ = ["deliveries_app", "endpoints_app", "mail_app", "play_app"]

endpoints_app = typer.Typer(
    help="Merchant endpoints: register, rotate secrets, pause, resume, health.",
    no_args_is_help=True,
)
deliveries_app = typer.Typer(
    help="Outbound deliveries: attempt logs and replays.", no_args_is_help=True
)
mail_app = typer.Typer(help="Emails caught by the development SMTP sink.", no_args_is_help=True)
play_app = typer.Typer(
    help="Webhooks the development play endpoint received for the demo merchant.",
    no_args_is_help=True,
)


def _endpoint_table(found: list[dict[str, Any]]) -> Table:
    table = Table("id", "merchant", "url", "status", "failures", "circuit open until", "deliveries")
    for e in found:
        table.add_row(
            e["id"],
            e["merchant_id"],
            e["url"],
            e["status"] + (f" ({e['status_reason']})" if e["status_reason"] else ""),
            str(e["consecutive_failures"]),
            e["circuit_open_until"] or "",
            ", ".join(f"{k} {v}" for k, v in sorted(e["deliveries"].items())),
        )
    return table


@endpoints_app.command("add")
def endpoints_add(
    merchant_id: str,
    url: str,
    description: Annotated[str, typer.Option(help="What this endpoint is for.")] = "",
    event_type: Annotated[
        list[str] | None, typer.Option("--event-type", help="Receive only these (repeatable).")
    ] = None,
    as_json: Json = False,
) -> None:
    """Register an endpoint; prints its id and its whsec_ signing secret (shown once)."""
    created = call(
        as_json,
        "POST",
        "/v1/endpoints",
        json={
            "merchant_id": merchant_id,
            "url": url,
            "description": description,
            "event_types": event_type or None,
        },
    )
    emit(as_json, created, f"Endpoint {created['id']}\nSecret   {created['secret']}")


@endpoints_app.command("list")
def endpoints_list(
    merchant: Annotated[str | None, typer.Option(help="Only this merchant's.")] = None,
    as_json: Json = False,
) -> None:
    """Endpoints with their health."""
    found = call(
        as_json, "GET", "/v1/endpoints", params={"merchant_id": merchant} if merchant else {}
    )
    emit(as_json, found, _endpoint_table(found))


@endpoints_app.command("show")
def endpoints_show(endpoint_id: str, as_json: Json = False) -> None:
    """One endpoint's health: status, failure streak, circuit breaker, deliveries by status."""
    found = call(as_json, "GET", f"/v1/endpoints/{endpoint_id}")
    emit(as_json, found, _endpoint_table([found]))


def _set(endpoint_id: str, action: str, as_json: bool) -> None:
    changed = call(as_json, "POST", f"/v1/endpoints/{endpoint_id}/{action}")
    emit(as_json, changed, f"Endpoint {endpoint_id} is {changed['status']}.")


@endpoints_app.command("pause")
def endpoints_pause(endpoint_id: str, as_json: Json = False) -> None:
    """Hold deliveries (kept, and sent on resume)."""
    _set(endpoint_id, "pause", as_json)


@endpoints_app.command("resume")
def endpoints_resume(endpoint_id: str, as_json: Json = False) -> None:
    """Resume a paused endpoint or re-enable a disabled one."""
    _set(endpoint_id, "resume", as_json)


@endpoints_app.command("delete")
def endpoints_delete(endpoint_id: str, as_json: Json = False) -> None:
    """Delete an endpoint (pending deliveries are cancelled)."""
    call(as_json, "DELETE", f"/v1/endpoints/{endpoint_id}")
    emit(as_json, {"id": endpoint_id, "status": "deleted"}, f"Endpoint {endpoint_id} deleted.")


@endpoints_app.command("rotate")
def endpoints_rotate(
    endpoint_id: str,
    overlap_seconds: Annotated[
        float | None, typer.Option(help="How long the old secret keeps signing (default 24 h).")
    ] = None,
    as_json: Json = False,
) -> None:
    """Rotate the signing secret; both sign every delivery until the overlap ends."""
    params = {} if overlap_seconds is None else {"overlap_seconds": overlap_seconds}
    rotated = call(as_json, "POST", f"/v1/endpoints/{endpoint_id}/secret/rotate", params=params)
    emit(
        as_json,
        rotated,
        f"New secret {rotated['secret']}\n"
        f"Old secrets stop signing at {rotated['previous_secrets_expire_at']}",
    )


def _attempt_table(attempts: list[dict[str, Any]]) -> Table:
    table = Table(
        "delivery", "attempt", "at", "outcome", "status", "latency ms", "error / response"
    )
    for a in attempts:
        table.add_row(
            a["delivery_id"],
            f"{a['attempt']}" + (f" (replay {a['cycle']})" if a["cycle"] else ""),
            a["started_at"],
            a["outcome"],
            str(a["status_code"] or ""),
            f"{a['latency_ms']:.1f}",
            a["error"] or (a["response_head"] or "")[:60],
        )
    return table


@endpoints_app.command("attempts")
def endpoints_attempts(
    endpoint_id: str,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    as_json: Json = False,
) -> None:
    """The endpoint's latest delivery attempts."""
    found = call(as_json, "GET", f"/v1/endpoints/{endpoint_id}/attempts", params={"limit": limit})
    emit(as_json, found, _attempt_table(found))


@deliveries_app.command("list")
def deliveries_list(
    endpoint: Annotated[str | None, typer.Option(help="One endpoint's.")] = None,
    event: Annotated[str | None, typer.Option(help="One event's (webhooks and emails).")] = None,
    status: Annotated[
        str | None, typer.Option(help="pending, succeeded, dead_lettered or cancelled.")
    ] = None,
    limit: Annotated[int, typer.Option()] = 50,
    as_json: Json = False,
) -> None:
    """Deliveries, newest first; with --event, each one's attempt log too."""
    params = {"endpoint_id": endpoint, "event_id": event, "status": status, "limit": limit}
    found = call(
        as_json, "GET", "/v1/deliveries", params={k: v for k, v in params.items() if v is not None}
    )
    table = Table("webhook-id", "event", "seq", "to", "status", "attempts", "last error")
    for d in found:
        table.add_row(
            d["id"],
            d["event_id"],
            str(d["seq"]),
            d["endpoint_id"] or f"{d['template']} → {d['recipient']}",
            d["status"],
            str(d["attempts"]),
            d["last_error"] or "",
        )
    if event and not as_json:
        emit(as_json, found, table)
        emit(as_json, [], _attempt_table([a for d in found for a in d["attempt_log"]]))
        return
    emit(as_json, found, table)


@deliveries_app.command("replay")
def deliveries_replay(
    delivery_ids: Annotated[list[str] | None, typer.Argument(help="Specific deliveries.")] = None,
    endpoint: Annotated[str | None, typer.Option(help="All of this endpoint's.")] = None,
    since: Annotated[datetime | None, typer.Option(help="Created at or after.")] = None,
    until: Annotated[datetime | None, typer.Option(help="Created before.")] = None,
    rate: Annotated[float, typer.Option(help="Release at most this many per second.")] = 10.0,
    execute: Annotated[bool, typer.Option(help="Without it, only count (dry run).")] = False,
    as_json: Json = False,
) -> None:
    """Replay dead-lettered deliveries: named ones, or all matching a filter (dry run unless
    --execute). The webhook-id stays the same, so merchants can deduplicate."""
    if delivery_ids:
        results = [call(as_json, "POST", f"/v1/deliveries/{d}/replay") for d in delivery_ids]
        emit(as_json, results, f"Replayed {len(results)} deliver(ies).")
        return
    if endpoint is None and since is None and until is None:
        fail("name deliveries, or filter with --endpoint, --since or --until", as_json, code=2)
    selection = {
        "endpoint_id": endpoint,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "dry_run": not execute,
        "rate_per_second": rate,
    }
    result = call(as_json, "POST", "/v1/deliveries/replay", json=selection)
    count = result["matched"] if result["dry_run"] else result["replayed"]
    verb = "Would replay" if result["dry_run"] else "Replayed"
    emit(as_json, result, f"{verb} {count} deliver(ies).")


@mail_app.command("list")
def mail_list(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: Json = False,
) -> None:
    """Emails the dev stack's SMTP sink caught (receipts, sale notices)."""
    caught = _caught_mail("mail list", as_json)[:limit]
    table = Table("#", "date", "to", "subject")
    for number, mail in enumerate(caught, 1):
        table.add_row(str(number), mail.date, mail.to, mail.subject)
    emit(as_json, [mail.__dict__ for mail in caught], table)


@mail_app.command("show")
def mail_show(
    number: Annotated[int, typer.Argument(help="As numbered by `mail list` (1 = newest).")] = 1,
    as_json: Json = False,
) -> None:
    """One caught email: headers and its plain-text part."""
    caught = _caught_mail("mail show", as_json)
    if not 1 <= number <= len(caught):
        fail(f"no email number {number} ({len(caught)} caught)", as_json)
    mail = caught[number - 1]
    emit(
        as_json,
        mail.__dict__,
        f"From:    {mail.sender}\nTo:      {mail.to}\nSubject: {mail.subject}\n"
        f"Date:    {mail.date}\nId:      {mail.message_id}\n\n{mail.text}",
    )


def _caught_mail(command: str, as_json: bool) -> list[CaughtMail]:
    """What the dev stack's SMTP sink caught, newest first."""
    dev_only(command, as_json)
    from devstack.mailsink import maildir, read_maildir

    return read_maildir(maildir(Settings()))[::-1]


def _play_received(as_json: bool) -> list[dict[str, Any]]:
    """What the running dev stack's play endpoint received, newest first."""
    url = f"http://127.0.0.1:{Settings().play_endpoint_port}/_received"
    try:
        received: list[dict[str, Any]] = httpx.get(url, timeout=5).json()
    except (httpx.HTTPError, ValueError) as error:
        fail(f"no play endpoint at {url} (is `switchboard dev` running?): {error}", as_json)
    return received[::-1]


@play_app.command("list")
def play_list(
    limit: Annotated[int, typer.Option(help="The newest this many.")] = 20, as_json: Json = False
) -> None:
    """Webhooks delivered to the play endpoint, newest first, each with whether its signature
    verified."""
    received = _play_received(as_json)[:limit]
    table = Table("#", "at", "type", "webhook-id", "signature", "data")
    for number, item in enumerate(received, 1):
        body = item["body"]
        data = body.get("data", {}) if isinstance(body, dict) else {}
        table.add_row(
            str(number),
            datetime.fromtimestamp(item["at"]).strftime("%H:%M:%S"),
            item["type"] or "",
            item["webhook_id"] or "",
            "[green]verified[/green]" if item["verified"] else f"[red]{escape(item['detail'])}",
            " ".join(f"{k}={v}" for k, v in data.items() if k != "merchant_id")[:60],
        )
    emit(as_json, received, table)


@play_app.command("show")
def play_show(
    number: Annotated[int, typer.Argument(help="As numbered by `play list` (1 = newest).")] = 1,
    as_json: Json = False,
) -> None:
    """One received webhook: its signature headers, the verdict and the body."""
    received = _play_received(as_json)
    if not 1 <= number <= len(received):
        fail(f"no webhook number {number} ({len(received)} received)", as_json)
    item = received[number - 1]
    headers = "\n".join(f"{name}: {value}" for name, value in item["headers"].items())
    verdict = "verified" if item["verified"] else "NOT verified"
    body = json.dumps(item["body"], indent=2)
    human = f"{headers}\n\nSignature {verdict} ({item['detail']})\n\n{body}"
    emit(as_json, item, escape(human))
