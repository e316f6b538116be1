"""What the exchange workflow tests share: creating and working requests over the real api, and
checking a request's audit log against the state machine."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import asyncpg
import httpx

from api.auth import create_api_key
from core.contracts import EXCHANGE_TRANSITIONS
from core.settings import DEV_ADMIN_API_KEY

ADMIN = {"authorization": f"Bearer {DEV_ADMIN_API_KEY}"}


def request_body(merchant: str, customer: str | None = None, **extra: Any) -> dict[str, Any]:
    """A create's body: 100.00 EUR to USDT for ``customer`` (a fresh one by default)."""
    return {
        "merchant_id": merchant,
        "customer_id": customer or f"c-{uuid.uuid4().hex[:10]}",
        "from_amount": 10_000,
        "from_currency": "EUR",
        "to_currency": "USDT",
        **extra,
    }


def keyed(headers: dict[str, str], key: str | None = None) -> dict[str, str]:
    """``headers`` with an ``Idempotency-Key`` (a fresh one by default)."""
    return {**headers, "Idempotency-Key": key or str(uuid.uuid4())}


async def create_request(
    http: httpx.AsyncClient, merchant: str, *, key: str | None = None, **extra: Any
) -> dict[str, Any]:
    """Create one exchange request (201) and return it."""
    response = await http.post(
        "/v1/exchange-requests", json=request_body(merchant, **extra), headers=keyed(ADMIN, key)
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def operators(pool: asyncpg.Pool, count: int) -> list[tuple[str, dict[str, str]]]:
    """``count`` operators with API keys of their own: (actor, headers)."""
    found = []
    run = uuid.uuid4().hex[:6]
    async with pool.acquire() as conn:
        for n in range(count):
            key_id, key = await create_api_key(conn, f"desk-{run}-{n}", ["read", "replay"])
            found.append((f"api-key:{key_id}:desk-{run}-{n}", {"authorization": f"Bearer {key}"}))
    return found


async def act(
    http: httpx.AsyncClient, request_id: str, action: str, headers: dict[str, str], **body: Any
) -> httpx.Response:
    """POST one working action (claim, advance, release, ...) as the operator of ``headers``."""
    return await http.post(
        f"/v1/exchange-requests/{request_id}/{action}", json=body or None, headers=headers
    )


async def audit_path(pool: asyncpg.Pool, request_id: str) -> list[asyncpg.Record]:
    """The request's audit entries, oldest first."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT from_state, to_state, actor, reason FROM audit_log"
        " WHERE entity_type = 'exchange_request' AND entity_id = $1 ORDER BY id",
        request_id,
    )
    return rows


async def assert_valid_path(pool: asyncpg.Pool, request_id: str) -> list[asyncpg.Record]:
    """The audit log is a path of the state machine from creation, one entry per version,
    ending in the request's status; returns it."""
    path = await audit_path(pool, request_id)
    row = await pool.fetchrow(
        "SELECT status, version FROM exchange_requests WHERE id = $1", request_id
    )
    assert row is not None
    assert path[0]["from_state"] is None and path[0]["to_state"] == EXCHANGE_TRANSITIONS.initial
    for before, after in itertools.pairwise(path):
        assert after["from_state"] == before["to_state"], path
        assert EXCHANGE_TRANSITIONS.allows(after["from_state"], after["to_state"]), path
    assert path[-1]["to_state"] == row["status"]
    assert len(path) == row["version"], (len(path), row["version"])
    return path
