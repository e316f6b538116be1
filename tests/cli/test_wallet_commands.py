"""The wallets commands against the real api: open, top up (once per key), transfer, refuse an
overdraft with the problem's detail, show, statement."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from tests.money_support import assert_books_balance, new_merchant


async def test_wallet_commands(cli: Any, pool: asyncpg.Pool) -> None:
    """A wallet's whole life from the terminal, every answer as JSON or a sentence."""
    merchant = await new_merchant(pool)
    source = json.loads((await cli("wallets", "open", merchant, "eur", "--json")).output)["id"]
    opened = await cli("wallets", "open", merchant, "EUR")
    assert opened.exit_code == 0 and "Opened wal_" in opened.output
    target = opened.output.split()[1]
    for _ in range(2):
        topped = await cli("wallets", "top-up", source, "100", "--key", f"cli-{source}")
        assert topped.exit_code == 0, topped.output
        assert "+100 EUR" in topped.output
    moved = await cli("wallets", "transfer", source, target, "30", "--json")
    assert json.loads(moved.output)["amount"] == 30
    refused = await cli("wallets", "transfer", source, target, "71", "--json")
    assert refused.exit_code == 1
    assert json.loads(refused.output)["error"].startswith("409 insufficient-funds: not enough")
    shown = await cli("wallets", "show", source)
    assert f"{source}: 70 EUR (open)" in shown.output
    statement = json.loads((await cli("wallets", "statement", source, "--json")).output)
    assert [e["balance_after"] for e in statement["entries"]] == [100, 70]
    assert (await cli("wallets", "statement", target)).exit_code == 0
    await assert_books_balance(pool)
