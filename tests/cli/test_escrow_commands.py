"""The escrows commands against the real api and worker: create from two wallets, show, list,
release (once), refund refused afterwards with the problem's detail."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from tests.money_support import assert_books_balance, new_merchant

pytestmark = pytest.mark.usefixtures("pipeline")


async def test_escrow_commands(cli: Any, pool: asyncpg.Pool) -> None:
    """An escrow's life from the terminal, every answer as JSON or a sentence."""
    merchant = await new_merchant(pool)
    first, second, winner = [
        json.loads((await cli("wallets", "open", merchant, "EUR", "--json")).output)["id"]
        for _ in range(3)
    ]
    for wallet in (first, second):
        assert (await cli("wallets", "top-up", wallet, "50")).exit_code == 0
    created = await cli(
        "escrows", "create", merchant, "eur", f"{first}=30", f"{second}=20",
        "--to-wallet", winner, "--reference", "gift-card-7", "--json",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    escrow = json.loads(created.output)
    assert (escrow["status"], escrow["amount"]) == ("funded", 50)
    shown = await cli("escrows", "show", escrow["id"])
    assert f"{escrow['id']}: funded, 50 EUR (gift-card-7)" in shown.output
    listed = json.loads((await cli("escrows", "list", "--merchant-id", merchant, "--json")).output)
    assert [e["id"] for e in listed["escrows"]] == [escrow["id"]]
    released = await cli("escrows", "release", escrow["id"], "--reason", "winner drawn")
    assert released.exit_code == 0, released.output
    assert "released" in released.output
    refused = await cli("escrows", "refund", escrow["id"], "--json")
    assert refused.exit_code == 1
    assert "409" in json.loads(refused.output)["error"]
    winner_shown = json.loads((await cli("wallets", "show", winner, "--json")).output)
    assert winner_shown["balance"] == 50
    await assert_books_balance(pool)
