"""Terminal commands for wallets (clients of the operator API): open, show, top up, transfer,
and read a statement. Money-moving commands send an ``Idempotency-Key`` (a fresh one unless
``--key`` is given), so a command repeated with the same key moves money once."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from rich.table import Table

from cli.client import Json, call, emit

__all__ = ["wallets_app"]

wallets_app = typer.Typer(
    help="Wallets: open, show, top up, transfer, statement (integer minor units).",
    no_args_is_help=True,
)
Key = Annotated[
    str | None,
    typer.Option("--key", help="Idempotency-Key; repeat it to retry safely (default: new)."),
]


def _key(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key or str(uuid.uuid4())}


@wallets_app.command("open")
def wallets_open(merchant_id: str, currency: str, as_json: Json = False) -> None:
    """Open an empty wallet of CURRENCY (e.g. EUR) for a merchant."""
    opened = call(
        as_json,
        "POST",
        "/v1/wallets",
        json={"merchant_id": merchant_id, "currency": currency.upper()},
        headers=_key(None),
    )
    emit(as_json, opened, f"Opened {opened['id']} ({opened['currency']}) for {merchant_id}.")


@wallets_app.command("show")
def wallets_show(wallet_id: str, as_json: Json = False) -> None:
    """A wallet and its balance."""
    wallet = call(as_json, "GET", f"/v1/wallets/{wallet_id}")
    emit(
        as_json,
        wallet,
        f"{wallet['id']}: {wallet['balance']} {wallet['currency']} ({wallet['status']}),"
        f" owner {wallet['merchant_id']}",
    )


@wallets_app.command("top-up")
def wallets_top_up(wallet_id: str, amount: int, key: Key = None, as_json: Json = False) -> None:
    """Credit a wallet with AMOUNT minor units from outside."""
    moved = call(
        as_json,
        "POST",
        f"/v1/wallets/{wallet_id}/top-ups",
        json={"amount": amount},
        headers=_key(key),
    )
    emit(as_json, moved, f"Ledger transaction {moved['id']}: +{amount} {moved['currency']}.")


@wallets_app.command("transfer")
def wallets_transfer(
    from_wallet: str, to_wallet: str, amount: int, key: Key = None, as_json: Json = False
) -> None:
    """Move AMOUNT minor units between two wallets of one currency."""
    moved = call(
        as_json,
        "POST",
        "/v1/transfers",
        json={"from_wallet": from_wallet, "to_wallet": to_wallet, "amount": amount},
        headers=_key(key),
    )
    emit(
        as_json,
        moved,
        f"Ledger transaction {moved['id']}: {amount} {moved['currency']}"
        f" {from_wallet} → {to_wallet}.",
    )


@wallets_app.command("statement")
def wallets_statement(
    wallet_id: str,
    after: Annotated[int, typer.Option(help="Only postings after this posting id.")] = 0,
    limit: Annotated[int, typer.Option(help="At most this many postings.")] = 100,
    as_json: Json = False,
) -> None:
    """A wallet's postings, oldest first, each with the balance it left."""
    statement = call(
        as_json,
        "GET",
        f"/v1/wallets/{wallet_id}/statement",
        params={"after": after, "limit": limit},
    )
    table = Table("posting", "transaction", "kind", "amount", "balance", "counterparty", "at")
    for entry in statement["entries"]:
        table.add_row(
            str(entry["posting_id"]),
            str(entry["transaction_id"]),
            entry["kind"],
            str(entry["amount"]),
            str(entry["balance_after"]),
            ", ".join(entry["counterparties"]),
            entry["created_at"],
        )
    emit(as_json, statement, table)
