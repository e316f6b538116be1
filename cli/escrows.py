"""Terminal commands for escrows (clients of the operator API): create, show, release, refund,
list. Money-moving commands send an ``Idempotency-Key`` (a fresh one unless ``--key`` is given),
so a command repeated with the same key acts once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.client import Json, call, emit, fail

__all__ = ["escrows_app"]

escrows_app = typer.Typer(
    help="Escrows: create (funded from wallets), show, release, refund, list.",
    no_args_is_help=True,
)
Key = Annotated[
    str | None,
    typer.Option("--key", help="Idempotency-Key; repeat it to retry safely (default: new)."),
]
Reason = Annotated[str | None, typer.Option("--reason", help="Recorded in the audit log.")]


def _key(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key or str(uuid.uuid4())}


def _source(text: str, as_json: bool) -> dict[str, Any]:
    wallet, _, amount = text.partition("=")
    if not amount.isdigit():
        fail(f"a source is WALLET=AMOUNT (integer minor units), not {text!r}", as_json)
    return {"wallet_id": wallet, "amount": int(amount)}


def _said(escrow: dict[str, Any]) -> str:
    return (
        f"{escrow['id']}: {escrow['status']}, {escrow['amount']} {escrow['currency']}"
        f" ({escrow['reference']})"
    )


@escrows_app.command("create")
def escrows_create(
    merchant_id: str,
    currency: str,
    sources: Annotated[list[str], typer.Argument(help="WALLET=AMOUNT, one or more.")],
    to_wallet: Annotated[str | None, typer.Option(help="Beneficiary wallet.")] = None,
    to_account: Annotated[
        str | None, typer.Option(help="Beneficiary external account at the payout provider.")
    ] = None,
    reference: Annotated[str, typer.Option(help="What it is for (giveaway, gift card).")] = "",
    expires_in_hours: Annotated[float, typer.Option(help="Refunded after this long.")] = 24.0,
    key: Key = None,
    as_json: Json = False,
) -> None:
    """Put money from the merchant's wallets in escrow for a beneficiary; waits for funding."""
    if (to_wallet is None) == (to_account is None):
        fail("give one beneficiary: --to-wallet or --to-account", as_json)
    expires_at = datetime.now(UTC) + timedelta(hours=expires_in_hours)
    created = call(
        as_json,
        "POST",
        "/v1/escrows",
        json={
            "merchant_id": merchant_id,
            "currency": currency.upper(),
            "sources": [_source(s, as_json) for s in sources],
            "beneficiary": {"wallet_id": to_wallet} if to_wallet else {"account": to_account},
            "expires_at": expires_at.isoformat(),
            "reference": reference or f"escrow for {merchant_id}",
        },
        headers=_key(key),
    )
    emit(as_json, created, _said(created))


@escrows_app.command("show")
def escrows_show(escrow_id: str, as_json: Json = False) -> None:
    """An escrow with its sources and transitions."""
    escrow = call(as_json, "GET", f"/v1/escrows/{escrow_id}")
    table = Table("from", "to", "actor", "reason", "at")
    for step in escrow["transitions"]:
        table.add_row(
            step["from_status"] or "",
            step["to_status"],
            step["actor"],
            step["reason"] or "",
            step["at"],
        )
    if as_json:
        emit(as_json, escrow)
    else:
        emit(as_json, escrow, _said(escrow))
        emit(as_json, escrow, table)


def _settle(
    escrow_id: str, action: str, reason: str | None, key: str | None, as_json: bool
) -> None:
    """Ask for the escrow's ``release`` or ``refund`` (the api waits for its outcome) and say where
    it stands."""
    escrow = call(
        as_json,
        "POST",
        f"/v1/escrows/{escrow_id}/{action}",
        json={"reason": reason},
        headers=_key(key),
    )
    emit(as_json, escrow, _said(escrow))


@escrows_app.command("release")
def escrows_release(
    escrow_id: str, reason: Reason = None, key: Key = None, as_json: Json = False
) -> None:
    """Release a funded escrow to its beneficiary."""
    _settle(escrow_id, "release", reason, key, as_json)


@escrows_app.command("refund")
def escrows_refund(
    escrow_id: str, reason: Reason = None, key: Key = None, as_json: Json = False
) -> None:
    """Return a funded (or release_failed) escrow to its sources."""
    _settle(escrow_id, "refund", reason, key, as_json)


@escrows_app.command("list")
def escrows_list(
    merchant_id: Annotated[str | None, typer.Option(help="Only this merchant's.")] = None,
    status: Annotated[str | None, typer.Option(help="Only escrows in this status.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    as_json: Json = False,
) -> None:
    """Escrows, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if merchant_id:
        params["merchant_id"] = merchant_id
    if status:
        params["status"] = status
    listed = call(as_json, "GET", "/v1/escrows", params=params)
    table = Table("escrow", "merchant", "status", "amount", "reference", "expires")
    for e in listed["escrows"]:
        table.add_row(
            e["id"],
            e["merchant_id"],
            e["status"],
            f"{e['amount']} {e['currency']}",
            e["reference"],
            e["expires_at"],
        )
    emit(as_json, listed, table)
