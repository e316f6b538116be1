"""The exchange commands against the real api: an operator (its own API key) claims, advances and
completes a request; a second claim is refused naming the winner; list and show the timeline."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from api.auth import create_api_key
from tests.money_support import new_merchant


async def test_exchange_commands(cli: Any, pool: asyncpg.Pool) -> None:
    merchant = await new_merchant(pool)
    async with pool.acquire() as conn:
        key_id, key = await create_api_key(conn, "cli-desk", ["read", "replay"])
    me = f"api-key:{key_id}:cli-desk"
    created = await cli("exchange", "create", merchant, "cust-1", "5000", "eur", "btc", "--json")
    assert created.exit_code == 0, created.output
    request_id = json.loads(created.output)["id"]
    claimed = await cli("exchange", "claim", request_id, "--api-key", key)
    assert claimed.exit_code == 0 and f"assigned by {me}" in claimed.output, claimed.output
    lost = await cli("exchange", "claim", request_id, "--json")
    assert lost.exit_code == 1 and me in json.loads(lost.output)["error"]
    for to in ("processing", "completed"):
        moved = await cli("exchange", "advance", request_id, to, "--reason", to, "--api-key", key)
        assert moved.exit_code == 0 and to in moved.output, moved.output
    listed = await cli("exchange", "list", "--assignee", me, "--json")
    assert [r["id"] for r in json.loads(listed.output)["items"]] == [request_id]
    shown = json.loads((await cli("exchange", "show", request_id, "--json")).output)
    assert [s["to_state"] for s in shown["timeline"]] == [
        "created", "pending", "assigned", "processing", "completed",
    ]  # fmt: skip
    assert (await cli("exchange", "show", request_id)).exit_code == 0
    assert (await cli("exchange", "list")).exit_code == 0
    assert (await cli("exchange", "cancel", request_id)).exit_code == 1


async def test_exchange_create_with_a_customer_email(cli: Any, pool: asyncpg.Pool) -> None:
    """``--customer-email`` reaches the request (the customer is emailed as it moves); an
    address the api refuses is a failed command, and no request is created."""
    merchant = await new_merchant(pool)
    created = await cli(
        "exchange", "create", merchant, "cust-2", "700", "eur", "usdt",
        "--customer-email", "ada@example.com", "--json",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    request_id = json.loads(created.output)["id"]
    assert json.loads(created.output)["customer_email"] == "ada@example.com"
    assert (
        await pool.fetchval(
            "SELECT customer_email FROM exchange_requests WHERE id = $1", request_id
        )
        == "ada@example.com"
    )
    refused = await cli(
        "exchange", "create", merchant, "cust-3", "700", "eur", "usdt",
        "--customer-email", "not-an-address", "--json",
    )  # fmt: skip
    assert refused.exit_code == 1, refused.output
    assert "customer_email" in refused.output
    assert not await pool.fetchval(
        "SELECT count(*) FROM exchange_requests WHERE merchant_id = $1 AND customer_id = 'cust-3'",
        merchant,
    )
