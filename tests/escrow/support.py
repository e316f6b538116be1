"""What the escrow tests share: wallets holding money, escrow requests through the api, and the
checks every escrow must pass (money conserved, transitions drawn, audited and published)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from core.contracts import ESCROW_TRANSITIONS
from core.settings import DEV_ADMIN_API_KEY
from tests.money_support import new_merchant

ADMIN = {"authorization": f"Bearer {DEV_ADMIN_API_KEY}"}


def keyed(key: str | None = None) -> dict[str, str]:
    return {**ADMIN, "Idempotency-Key": key or str(uuid.uuid4())}


async def wallets(
    http: httpx.AsyncClient, pool: asyncpg.Pool, amounts: list[int]
) -> tuple[str, list[str]]:
    """A new merchant and wallets of it holding ``amounts`` (EUR, topped up through the api)."""
    merchant = await new_merchant(pool)
    opened = []
    for amount in amounts:
        response = await http.post(
            "/v1/wallets", json={"merchant_id": merchant, "currency": "EUR"}, headers=ADMIN
        )
        assert response.status_code == 201, response.text
        wallet: str = response.json()["id"]
        opened.append(wallet)
        if amount:
            topped = await http.post(
                f"/v1/wallets/{wallet}/top-ups", json={"amount": amount}, headers=keyed()
            )
            assert topped.status_code == 201, topped.text
    return merchant, opened


def escrow_body(
    merchant: str,
    sources: list[tuple[str, int]],
    *,
    wallet: str | None = None,
    account: str | None = None,
    expires_in: timedelta = timedelta(days=1),
    reference: str = "giveaway-1",
) -> dict[str, Any]:
    beneficiary = {"wallet_id": wallet} if wallet else {"account": account}
    return {
        "merchant_id": merchant,
        "currency": "EUR",
        "sources": [{"wallet_id": w, "amount": a} for w, a in sources],
        "beneficiary": beneficiary,
        "expires_at": (datetime.now(UTC) + expires_in).isoformat(),
        "reference": reference,
    }


async def balances(pool: asyncpg.Pool, accounts: list[str]) -> list[int]:
    rows = await pool.fetch(
        "SELECT id, balance FROM ledger_accounts WHERE id = ANY($1::text[])", accounts
    )
    found = {row["id"]: row["balance"] for row in rows}
    return [found[a] for a in accounts]


async def assert_conserved(pool: asyncpg.Pool) -> None:
    """Jepsen's bank check on the escrow's terms: wallets + escrow holdings + settled out (paid
    to external accounts) == money in (top-ups), and escrows hold exactly what is in flight."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        wallets_total = await conn.fetchval(
            "SELECT coalesce(sum(balance), 0) FROM ledger_accounts WHERE kind = 'wallet'"
        )
        held = await conn.fetchval(
            "SELECT coalesce(sum(balance), 0) FROM ledger_accounts WHERE kind = 'escrow'"
        )
        money_in = await conn.fetchval(
            "SELECT coalesce(sum(-p.amount), 0) FROM postings p"
            " JOIN ledger_transactions t ON t.id = p.transaction_id"
            " WHERE t.kind = 'top_up' AND p.account_id LIKE 'world:%'"
        )
        settled_out = await conn.fetchval(
            "SELECT coalesce(sum(p.amount), 0) FROM postings p"
            " JOIN ledger_transactions t ON t.id = p.transaction_id"
            " WHERE t.kind = 'escrow_payout' AND p.account_id LIKE 'world:%'"
        )
        not_empty_when_settled = await conn.fetch(
            "SELECT e.id, e.status, a.balance FROM escrows e JOIN ledger_accounts a ON a.id = e.id"
            " WHERE (e.status IN ('released', 'refunded', 'failed', 'created') AND a.balance <> 0)"
            " OR (e.status IN ('funded', 'releasing', 'release_failed', 'refunding')"
            " AND a.balance <> e.amount)"
        )
    assert wallets_total + held + settled_out == money_in
    assert not not_empty_when_settled, not_empty_when_settled


async def assert_history(pool: asyncpg.Pool, escrow_id: str, expected: list[str]) -> None:
    """The escrow went through ``expected`` (from creation), each step drawn, audited with an
    actor and published as a merchant event, the merchant's seqs gapless."""
    audit = await pool.fetch(
        "SELECT from_state, to_state, actor, event_id FROM audit_log"
        " WHERE entity_type = 'escrow' AND entity_id = $1 ORDER BY id",
        escrow_id,
    )
    assert [row["to_state"] for row in audit] == expected
    previous = None
    for row in audit:
        assert row["from_state"] == previous
        assert ESCROW_TRANSITIONS.allows(previous, row["to_state"])
        assert row["actor"]
        previous = row["to_state"]
    events = await pool.fetch(
        "SELECT event_id, type, data FROM events WHERE event_id = ANY($1::text[]) ORDER BY seq",
        [row["event_id"] for row in audit],
    )
    assert [e["type"] for e in events] == [f"escrow.{state}" for state in expected]
    assert all(e["data"]["escrow_id"] == escrow_id for e in events)
    merchant = await pool.fetchval("SELECT merchant_id FROM escrows WHERE id = $1", escrow_id)
    seqs = [
        r["seq"]
        for r in await pool.fetch(
            "SELECT seq FROM events WHERE merchant_id = $1 ORDER BY seq", merchant
        )
    ]
    assert seqs == list(range(1, len(seqs) + 1))


async def assert_release_refused_alert(pool: asyncpg.Pool, escrow_id: str) -> None:
    """The escrow's refused release raised its alert, still open."""
    alert = await pool.fetchrow(
        "SELECT kind, status FROM alerts WHERE dedup_key = $1",
        f"escrow_release_refused:{escrow_id}",
    )
    assert alert is not None
    assert dict(alert) == {"kind": "escrow_release_refused", "status": "open"}


async def refund_held_escrow(
    http: httpx.AsyncClient, pool: asyncpg.Pool, escrow_id: str, sources: dict[str, int]
) -> None:
    """An operator refunds an escrow held in release_failed: it ends refunded, each source has
    its amount back and the escrow nothing, its audited path went through the hold, and money is
    conserved."""
    refunded = await http.post(f"/v1/escrows/{escrow_id}/refund", json={}, headers=keyed())
    assert refunded.status_code == 200, refunded.text
    assert refunded.json()["status"] == "refunded"
    assert await balances(pool, [*sources, escrow_id]) == [*sources.values(), 0]
    await assert_history(
        pool,
        escrow_id,
        ["created", "funding", "funded", "releasing", "release_failed", "refunding", "refunded"],
    )
    await assert_conserved(pool)
