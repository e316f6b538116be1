"""Terminal commands for exchange requests (clients of the operator API): create, list, show,
claim, advance, release, reassign, cancel. An operator works the desk as themselves with
``--api-key`` (or ``SWITCHBOARD_OPERATOR_API_KEY``); without it, the settings' admin key acts.
``create`` sends an ``Idempotency-Key`` (a fresh one unless ``--key`` is given)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.client import Json, call, emit

__all__ = ["exchange_app"]

exchange_app = typer.Typer(
    help="Exchange requests: create, list, show, claim, advance, release, reassign, cancel.",
    no_args_is_help=True,
)
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="SWITCHBOARD_OPERATOR_API_KEY",
        help="Act as the operator owning this API key (default: the admin key).",
    ),
]
Reason = Annotated[str | None, typer.Option(help="Why (kept in the audit log).")]


def _as(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def _line(request: dict[str, Any]) -> str:
    held = f" by {request['assignee']}" if request["assignee"] else ""
    return (
        f"{request['id']}: {request['status']}{held} — {request['from_amount']}"
        f" {request['from_currency']} → {request['to_currency']} for {request['customer_id']}"
    )


@exchange_app.command("create")
def exchange_create(
    merchant_id: str,
    customer_id: str,
    from_amount: int,
    from_currency: str,
    to_currency: str,
    quote: Annotated[int | None, typer.Option(help="Quoted amount to receive.")] = None,
    customer_email: Annotated[
        str | None,
        typer.Option("--customer-email", help="Email the customer about the request as it moves."),
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="Idempotency-Key; repeat it to retry safely.")
    ] = None,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Create an exchange request of FROM_AMOUNT minor units and queue it."""
    created = call(
        as_json,
        "POST",
        "/v1/exchange-requests",
        json={
            "merchant_id": merchant_id,
            "customer_id": customer_id,
            "from_amount": from_amount,
            "from_currency": from_currency.upper(),
            "to_currency": to_currency.upper(),
            "quote": quote,
            "customer_email": customer_email,
        },
        headers={**_as(api_key), "Idempotency-Key": key or str(uuid.uuid4())},
    )
    emit(as_json, created, f"Created {_line(created)}.")


@exchange_app.command("list")
def exchange_list(
    status: Annotated[str | None, typer.Option(help="e.g. pending (the queue).")] = None,
    assignee: Annotated[str | None, typer.Option(help="An operator's actor name.")] = None,
    merchant: Annotated[str | None, typer.Option(help="Only this merchant's.")] = None,
    customer: Annotated[str | None, typer.Option(help="Only this customer's.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Exchange requests, oldest first."""
    params: dict[str, str | int | None] = {"status": status, "assignee": assignee}
    params |= {"merchant_id": merchant, "customer_id": customer, "limit": limit}
    listed = call(
        as_json,
        "GET",
        "/v1/exchange-requests",
        params={k: v for k, v in params.items() if v is not None},
        headers=_as(api_key),
    )
    table = Table("id", "status", "assignee", "amount", "to", "customer", "created")
    for r in listed["items"]:
        table.add_row(
            r["id"],
            r["status"],
            r["assignee"] or "",
            f"{r['from_amount']} {r['from_currency']}",
            r["to_currency"],
            r["customer_id"],
            r["created_at"],
        )
    emit(as_json, listed, table)


@exchange_app.command("show")
def exchange_show(request_id: str, api_key: ApiKey = None, as_json: Json = False) -> None:
    """One exchange request and its timeline."""
    shown = call(as_json, "GET", f"/v1/exchange-requests/{request_id}", headers=_as(api_key))
    table = Table("at", "from", "to", "who", "why", title=_line(shown))
    for step in shown["timeline"]:
        table.add_row(
            step["at"], step["from_state"] or "(new)", step["to_state"], step["actor"],
            step["reason"] or "",
        )  # fmt: skip
    emit(as_json, shown, table)


def _change(
    request_id: str, action: str, body: dict[str, Any] | None, api_key: str | None, as_json: bool
) -> None:
    changed = call(
        as_json,
        "POST",
        f"/v1/exchange-requests/{request_id}/{action}",
        json=body,
        headers=_as(api_key),
    )
    emit(as_json, changed, _line(changed))


@exchange_app.command("claim")
def exchange_claim(request_id: str, api_key: ApiKey = None, as_json: Json = False) -> None:
    """Claim a pending request (exactly one of simultaneous claimers wins)."""
    _change(request_id, "claim", None, api_key, as_json)


@exchange_app.command("advance")
def exchange_advance(
    request_id: str,
    to: Annotated[str, typer.Argument(help="processing, completed or failed.")],
    reason: Reason = None,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Move your request on: processing, then completed (or failed)."""
    _change(request_id, "advance", {"to": to, "reason": reason}, api_key, as_json)


@exchange_app.command("release")
def exchange_release(
    request_id: str, reason: Reason = None, api_key: ApiKey = None, as_json: Json = False
) -> None:
    """Put your request back in the queue."""
    _change(request_id, "release", {"reason": reason}, api_key, as_json)


@exchange_app.command("reassign")
def exchange_reassign(
    request_id: str,
    assignee: Annotated[str, typer.Argument(help="The operator's actor name.")],
    reason: Reason = None,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Give a request to another operator (admin)."""
    _change(request_id, "reassign", {"assignee": assignee, "reason": reason}, api_key, as_json)


@exchange_app.command("cancel")
def exchange_cancel(
    request_id: str, reason: Reason = None, api_key: ApiKey = None, as_json: Json = False
) -> None:
    """Cancel a request nobody has started on."""
    _change(request_id, "cancel", {"reason": reason}, api_key, as_json)
