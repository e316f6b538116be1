"""The ``switchboard`` command line: run the processes, and operate the system from a terminal.

Process commands (``dev``, ``api``, ``worker``, ``gateway``, ``migrate``) run code in this
process. Operator commands (``partners``, ``merchants``, ``trace``, ``events``, ``dead-letters``,
``alerts``, ``wallets``, ``escrows``, ``exchange``) are clients of the operator API at
``SWITCHBOARD_PUBLIC_BASE_URL``; ``send`` and ``demo`` sign webhooks like a partner would. Every
command takes ``--json`` for machine-readable output.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from cli.client import Json, call, console, dev_only, emit, fail, operator_client, problem_line
from cli.dev_state import DEMO_MERCHANT, DEMO_PARTNER, load_dev_state
from cli.escrows import escrows_app
from cli.exchange import exchange_app
from cli.oncall import alerts_app, pages_app
from cli.outbound import deliveries_app, endpoints_app, mail_app, play_app
from cli.wallets import wallets_app
from core.settings import Settings
from core.signing import sign_headers

__all__ = ["app"]


def _settings_help() -> str:
    lines = ["Settings (environment variables or .env):\n\n"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "***" if name == "admin_api_key" else default
        lines.append(f"SWITCHBOARD_{name.upper()} = {shown}  {field.description or ''}\n\n")
    return "".join(lines)


app = typer.Typer(
    help="Switchboard: a durable event backbone for fintech partner integrations.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
partners_app = typer.Typer(help="Manage partners and their signing secrets.", no_args_is_help=True)
merchants_app = typer.Typer(
    help="Manage merchants and the partners linked to them.", no_args_is_help=True
)
dead_letters_app = typer.Typer(help="List and replay dead letters.", no_args_is_help=True)
app.add_typer(partners_app, name="partners")
app.add_typer(merchants_app, name="merchants")
app.add_typer(dead_letters_app, name="dead-letters")
api_keys_app = typer.Typer(help="Create, list and revoke operator API keys.", no_args_is_help=True)
app.add_typer(api_keys_app, name="api-keys")
app.add_typer(endpoints_app, name="endpoints")
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(mail_app, name="mail")
app.add_typer(play_app, name="play")
app.add_typer(alerts_app, name="alerts")
app.add_typer(pages_app, name="pages")
app.add_typer(wallets_app, name="wallets")
app.add_typer(escrows_app, name="escrows")
app.add_typer(exchange_app, name="exchange")

# -- processes ---------------------------------------------------------------------------------


@app.command(epilog=_settings_help())
def dev() -> None:
    """Run everything on embedded defaults: Postgres, Redis, Temporal (+ Web UI), api, worker."""
    dev_only("dev", as_json=False)
    from cli.dev import run_dev

    raise typer.Exit(run_dev(Settings(), console.print))


@app.command()
def api() -> None:
    """Run the api (ingress, operator API, docs) with uvicorn."""
    import uvicorn

    from api.app import server_options

    settings = Settings()
    uvicorn.run(
        "api.app:create_app_from_environment",
        factory=True,
        workers=settings.api_workers,
        host=settings.api_host,
        port=settings.api_port,
        **server_options(settings),
    )


@app.command()
def worker() -> None:
    """Run the Temporal worker and the inbox relay (same as ``python worker.py``)."""
    import worker as worker_process

    worker_process.main()


@app.command()
def gateway() -> None:
    """Run the WebSocket gateway (live merchant feeds for dashboards) until SIGTERM."""
    from gateway.server import main as run_gateway

    run_gateway()


@app.command()
def migrate(as_json: Json = False) -> None:
    """Apply pending database migrations."""
    from core.db import migrate as apply_migrations

    apply_migrations(Settings().database_url)
    emit(as_json, {"migrated": True}, "Migrations applied.")


# -- partners and merchants --------------------------------------------------------------------


@partners_app.command("add")
def partners_add(
    partner_id: Annotated[str, typer.Argument(help="Partner id (letters, digits, _ . -).")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    rate_limit: Annotated[int | None, typer.Option(help="Webhooks per second.")] = None,
    auto_onboard: Annotated[
        bool,
        typer.Option(help="Its webhooks create and link merchants no partner has yet."),
    ] = False,
    as_json: Json = False,
) -> None:
    """Create a partner and print its signing secret (shown once)."""
    body = {
        "id": partner_id,
        "name": name,
        "rate_limit_per_second": rate_limit,
        "auto_onboard_merchants": auto_onboard,
    }
    created = call(as_json, "POST", "/v1/partners", json=body)
    emit(as_json, created, f"Partner [bold]{created['id']}[/bold]\nSecret  {created['secret']}")


@partners_app.command("update")
def partners_update(
    partner_id: str,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    rate_limit: Annotated[int | None, typer.Option(help="Webhooks per second.")] = None,
    default_rate_limit: Annotated[
        bool, typer.Option(help="Use SWITCHBOARD_PARTNER_RATE_LIMIT_PER_SECOND again.")
    ] = False,
    auto_onboard: Annotated[
        bool | None,
        typer.Option(help="Whether its webhooks create and link merchants no partner has yet."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Change a partner's settings; what is not given stays as it is."""
    changes: dict[str, object] = {}
    if name is not None:
        changes["name"] = name
    if rate_limit is not None or default_rate_limit:
        changes["rate_limit_per_second"] = rate_limit
    if auto_onboard is not None:
        changes["auto_onboard_merchants"] = auto_onboard
    partner = call(as_json, "PATCH", f"/v1/partners/{partner_id}", json=changes)
    emit(
        as_json,
        partner,
        f"Partner [bold]{partner['id']}[/bold]  rate limit"
        f" {partner['rate_limit_per_second'] or 'default'}/s, onboards merchants:"
        f" {'yes' if partner['auto_onboard_merchants'] else 'no'}",
    )


@partners_app.command("list")
def partners_list(as_json: Json = False) -> None:
    """List partners."""
    partners = call(as_json, "GET", "/v1/partners")
    table = Table("id", "name", "rate limit/s", "onboards merchants", "live secrets", "created")
    for p in partners:
        table.add_row(
            p["id"],
            p["name"],
            str(p["rate_limit_per_second"] or "default"),
            "yes" if p["auto_onboard_merchants"] else "no",
            str(p["live_secrets"]),
            p["created_at"],
        )
    emit(as_json, partners, table)


@partners_app.command("rotate")
def partners_rotate(
    partner_id: str,
    overlap: Annotated[int, typer.Option(help="Seconds the old secrets keep working.")] = 86400,
    as_json: Json = False,
) -> None:
    """Add a new secret; the current ones keep verifying during the overlap."""
    rotated = call(
        as_json, "POST", f"/v1/partners/{partner_id}/secrets", params={"overlap_seconds": overlap}
    )
    emit(
        as_json,
        rotated,
        f"New secret {rotated['secret']}\n"
        f"Old secrets expire at {rotated['previous_secrets_expire_at']}",
    )


@api_keys_app.command("add")
def api_keys_add(
    name: str,
    scope: Annotated[list[str], typer.Option(help="read, replay or admin; repeatable.")],
    as_json: Json = False,
) -> None:
    """Create an operator API key with scopes and print it (shown once)."""
    created = call(as_json, "POST", "/v1/api-keys", json={"name": name, "scopes": scope})
    emit(
        as_json,
        created,
        f"Key {created['key']}  id {created['id']}  scopes {', '.join(created['scopes'])}",
    )


@api_keys_app.command("list")
def api_keys_list(as_json: Json = False) -> None:
    """List API keys (never the keys themselves), revoked ones included."""
    keys = call(as_json, "GET", "/v1/api-keys")
    table = Table("id", "name", "scopes", "created", "revoked")
    for key in keys:
        table.add_row(
            str(key["id"]),
            key["name"],
            ", ".join(key["scopes"]),
            key["created_at"],
            key["revoked_at"] or "",
        )
    emit(as_json, keys, table)


@api_keys_app.command("revoke")
def api_keys_revoke(key_id: int, as_json: Json = False) -> None:
    """Revoke an API key at once (audited)."""
    revoked = call(as_json, "DELETE", f"/v1/api-keys/{key_id}")
    emit(as_json, revoked, f"Key {revoked['id']} ({revoked['name']}) revoked")


@merchants_app.command("add")
def merchants_add(
    merchant_id: str,
    name: Annotated[str | None, typer.Option()] = None,
    email: Annotated[str | None, typer.Option(help="Where sale notices go.")] = None,
    partner: Annotated[
        list[str] | None, typer.Option(help="A partner that processes for it; repeatable.")
    ] = None,
    as_json: Json = False,
) -> None:
    """Create a merchant, linked to the partners that process for it."""
    body = {"id": merchant_id, "name": name, "email": email, "partners": partner or []}
    merchant = call(as_json, "POST", "/v1/merchants", json=body)
    emit(as_json, merchant, _merchant_summary(merchant))


@merchants_app.command("update")
def merchants_update(
    merchant_id: str,
    name: Annotated[str | None, typer.Option()] = None,
    email: Annotated[str | None, typer.Option()] = None,
    clear_email: Annotated[bool, typer.Option(help="Remove the email address.")] = False,
    as_json: Json = False,
) -> None:
    """Change a merchant's name or email; what is not given stays as it is."""
    changes: dict[str, str | None] = {}
    if name is not None:
        changes["name"] = name
    if email is not None or clear_email:
        changes["email"] = email
    merchant = call(as_json, "PATCH", f"/v1/merchants/{merchant_id}", json=changes)
    emit(as_json, merchant, _merchant_summary(merchant))


@merchants_app.command("show")
def merchants_show(merchant_id: str, as_json: Json = False) -> None:
    """A merchant with its partners and the balances each reports."""
    merchant = call(as_json, "GET", f"/v1/merchants/{merchant_id}")
    emit(as_json, merchant, _merchant_summary(merchant))


@merchants_app.command("link")
def merchants_link(merchant_id: str, partner_id: str, as_json: Json = False) -> None:
    """Link a partner to a merchant; its parked webhooks for the merchant run again."""
    linked = call(as_json, "PUT", f"/v1/merchants/{merchant_id}/partners/{partner_id}")
    state = "linked" if linked["created"] else "already linked"
    emit(
        as_json,
        linked,
        f"{partner_id} {state} to {merchant_id}; {len(linked['replayed'])} parked webhook(s)"
        " replayed",
    )


@merchants_app.command("unlink")
def merchants_unlink(merchant_id: str, partner_id: str, as_json: Json = False) -> None:
    """Unlink a partner: its later webhooks for the merchant are parked."""
    call(as_json, "DELETE", f"/v1/merchants/{merchant_id}/partners/{partner_id}")
    emit(
        as_json,
        {"merchant_id": merchant_id, "partner_id": partner_id, "linked": False},
        f"{partner_id} unlinked from {merchant_id}",
    )


@merchants_app.command("list")
def merchants_list(as_json: Json = False) -> None:
    """List merchants with their partners and latest event sequence number."""
    merchants = call(as_json, "GET", "/v1/merchants")
    table = Table("id", "name", "email", "partners", "last seq")
    for m in merchants:
        table.add_row(
            m["id"], m["name"] or "", m["email"] or "", ", ".join(m["partners"]), str(m["last_seq"])
        )
    emit(as_json, merchants, table)


def _merchant_summary(merchant: dict[str, Any]) -> str:
    lines = [
        f"Merchant [bold]{merchant['id']}[/bold]  {merchant['name'] or ''}",
        f"Email     {merchant['email'] or '-'}",
        f"Partners  {', '.join(merchant['partners']) or '- (webhooks for it are parked)'}",
    ]
    lines += [
        f"Balance   {b['currency']} {b['available']} ({b['pending']} pending),"
        f" from {b['partner_id']}"
        for b in merchant["balances"]
    ]
    return "\n".join(lines)


# -- webhooks ----------------------------------------------------------------------------------


def _event_data(
    event_type: str,
    merchant: str,
    amount: int,
    currency: str,
    payment_id: str | None,
    refund_id: str | None,
    email: str | None,
) -> dict[str, Any]:
    payment_id = payment_id or f"pay_{uuid.uuid4().hex[:12]}"
    if event_type == "payment.succeeded":
        data: dict[str, Any] = {"payment_id": payment_id, "amount": amount, "currency": currency}
        if email:
            data["customer_email"] = email
    elif event_type == "payment.failed":
        data = {
            "payment_id": payment_id,
            "amount": amount,
            "currency": currency,
            "failure_code": "card_declined",
        }
    elif event_type == "refund.succeeded":
        data = {
            "refund_id": refund_id or f"re_{uuid.uuid4().hex[:12]}",
            "payment_id": payment_id,
            "amount": amount,
            "currency": currency,
        }
    elif event_type == "balance.updated":
        data = {
            "available": amount,
            "pending": 0,
            "currency": currency,
            "as_of": datetime.now().astimezone().isoformat(),
        }
    else:
        data = {"note": "an event type Switchboard does not know"}
    return {"merchant_id": merchant, **data}


def _partner_credentials(
    partner: str | None, secret: str | None, as_json: bool
) -> tuple[str, str, str]:
    settings = Settings()
    state = load_dev_state(settings)
    partner = partner or (state.partner_id if state else DEMO_PARTNER)
    if secret is None:
        if state is None or state.partner_id != partner:
            fail(f"pass --secret for partner {partner!r} (no dev state for it)", as_json)
        secret = state.partner_secret
    return settings.public_base_url, partner, secret


@app.command()
def send(
    event_type: Annotated[
        str,
        typer.Argument(
            help="payment.succeeded | payment.failed | refund.succeeded | balance.updated | any"
        ),
    ],
    merchant: Annotated[str, typer.Option(help="Merchant id.")] = DEMO_MERCHANT,
    amount: Annotated[int, typer.Option(help="Minor units (cents).")] = 1000,
    currency: Annotated[str, typer.Option()] = "EUR",
    payment_id: Annotated[str | None, typer.Option(help="Default: a new id.")] = None,
    refund_id: Annotated[str | None, typer.Option(help="Default: a new id.")] = None,
    email: Annotated[str | None, typer.Option(help="Customer email (payments).")] = None,
    webhook_id: Annotated[str | None, typer.Option(help="Default: a new id.")] = None,
    partner: Annotated[str | None, typer.Option(help="Default: the dev demo partner.")] = None,
    secret: Annotated[str | None, typer.Option(help="Default: the dev demo secret.")] = None,
    as_json: Json = False,
) -> None:
    """Sign and send one webhook, as a partner would."""
    base_url, partner_id, key = _partner_credentials(partner, secret, as_json)
    data = _event_data(event_type, merchant, amount, currency, payment_id, refund_id, email)
    body = json.dumps({"type": event_type, "data": data}).encode()
    msg_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    headers = {
        "content-type": "application/json",
        **sign_headers(key, msg_id, body, now=int(time.time())),
    }
    try:
        response = httpx.post(
            f"{base_url}/webhooks/{partner_id}", content=body, headers=headers, timeout=30
        )
    except httpx.HTTPError as error:
        fail(f"cannot reach the api at {base_url}: {error}", as_json)
    # The ids the event names, so that the next command can refer to them (a refund of it).
    named = {key: data[key] for key in ("payment_id", "refund_id") if key in data}
    result = {"status": response.status_code, "webhook_id": msg_id, **named, **response.json()}
    if response.status_code >= 300:
        emit(as_json, result, problem_line(response))
        raise typer.Exit(1)
    lines = [f"{response.status_code} {event_type} → event {result.get('event_id')}"]
    lines += [f"{key.removesuffix('_id')}: {value}" for key, value in named.items()]
    lines.append(f"trace: {result.get('trace_url')}")
    emit(as_json, result, "\n".join(lines))


@app.command()
def demo(
    rate: Annotated[float, typer.Option(help="Webhooks per second.")] = 10.0,
    duration: Annotated[float, typer.Option(help="Seconds to send for.")] = 30.0,
    merchants: Annotated[
        int, typer.Option(help="Merchants to spread traffic over, merchant_demo first.")
    ] = 5,
    partner: Annotated[str | None, typer.Option(help="Default: the dev demo partner.")] = None,
    secret: Annotated[str | None, typer.Option(help="Default: the dev demo secret.")] = None,
    as_json: Json = False,
) -> None:
    """Send steady synthetic traffic (payments, refunds, balances) and report what happened."""
    from cli.demo import DemoPlan, run_demo

    base_url, partner_id, key = _partner_credentials(partner, secret, as_json)
    plan = DemoPlan(base_url, partner_id, key, rate, duration, merchants)
    if not as_json:
        console.print(f"Watch it live: {base_url}/dashboard?merchant={plan.first_merchant}")
    report = run_demo(plan, operator=operator_client(Settings()), show_progress=not as_json)
    emit(as_json, report.__dict__, report.summary())
    if report.failed:
        raise typer.Exit(1)


# -- operating ---------------------------------------------------------------------------------


@app.command()
def trace(event_id: str, as_json: Json = False) -> None:
    """Show a webhook's path: received → recorded → workflow → each step → published."""
    found = call(as_json, "GET", f"/v1/webhooks/{event_id}")
    table = Table("at", "step", "detail")
    for step in found["steps"]:
        table.add_row(step["at"], step["step"], step["detail"] or "")
    header = (
        f"[bold]{found['type']}[/bold] {found['event_id']} from {found['partner_id']}"
        f" — {found['status']}\nworkflow: {found['workflow_url']}"
    )
    emit(as_json, found, _Group(header, table))


class _Group:
    """Two renderables printed one after the other."""

    def __init__(self, *parts: Any) -> None:
        self.parts = parts

    def __rich__(self) -> Any:
        from rich.console import Group

        return Group(*self.parts)


@app.command()
def events(
    merchant: str,
    after: Annotated[int, typer.Option(help="Only events with a larger seq.")] = 0,
    limit: Annotated[int, typer.Option()] = 50,
    as_json: Json = False,
) -> None:
    """A merchant's events in sequence order."""
    found = call(
        as_json,
        "GET",
        "/v1/events",
        params={"merchant_id": merchant, "after_seq": after, "limit": limit},
    )
    table = Table("seq", "type", "event", "data")
    for e in found:
        table.add_row(str(e["seq"]), e["type"], e["event_id"], json.dumps(e["data"]))
    emit(as_json, found, table)


@dead_letters_app.command("list")
def dead_letters_list(
    partner: Annotated[str | None, typer.Option()] = None, as_json: Json = False
) -> None:
    """Webhooks parked for an operator."""
    found = call(
        as_json, "GET", "/v1/dead-letters", params={"partner_id": partner} if partner else {}
    )
    table = Table("event", "type", "reason", "parked at", "replays")
    for d in found:
        table.add_row(
            d["event_id"], d["type"], d["reason"], d["created_at"], str(d["replay_count"])
        )
    emit(as_json, found, table)


@dead_letters_app.command("replay")
def dead_letters_replay(
    event_ids: Annotated[list[str] | None, typer.Argument(help="Specific events.")] = None,
    partner: Annotated[str | None, typer.Option(help="All of this partner's.")] = None,
    since: Annotated[datetime | None, typer.Option(help="Parked at or after.")] = None,
    until: Annotated[datetime | None, typer.Option(help="Parked before.")] = None,
    execute: Annotated[bool, typer.Option(help="Without it, only count (dry run).")] = False,
    as_json: Json = False,
) -> None:
    """Replay dead letters: named ones, or all matching a filter (dry run unless --execute)."""
    if event_ids:
        results = [
            call(as_json, "POST", f"/v1/dead-letters/{event_id}/replay") for event_id in event_ids
        ]
        emit(as_json, results, f"Replayed {len(results)} dead letter(s).")
        return
    selection = {
        "partner_id": partner,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "dry_run": not execute,
    }
    result = call(as_json, "POST", "/v1/dead-letters/replay", json=selection)
    verb = "Would replay" if result["dry_run"] else "Replayed"
    emit(
        as_json,
        result,
        f"{verb} {result['matched'] if result['dry_run'] else result['replayed']} dead letter(s).",
    )


if __name__ == "__main__":
    app()
