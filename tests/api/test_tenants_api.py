"""Operator API for tenants and keys: merchants are created once and changed field by field,
partners are linked and unlinked, API keys are listed and revoked, and all of it is audited."""

from __future__ import annotations

import uuid

import asyncpg
import httpx
import pytest

ADMIN = {"authorization": "Bearer sb_dev_admin_key"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def audit_trail(
    pool: asyncpg.Pool, entity_type: str, entity_id: str
) -> list[tuple[object, ...]]:
    rows = await pool.fetch(
        "SELECT from_state, to_state, actor, reason FROM audit_log"
        " WHERE entity_type = $1 AND entity_id = $2 ORDER BY id",
        entity_type,
        entity_id,
    )
    return [tuple(row.values()) for row in rows]


async def test_create_is_create_and_patch_touches_only_what_is_sent(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    merchant = unique("m-shop")
    body = {"id": merchant, "name": "Shop", "email": "owner@shop.example"}
    assert (await http.post("/v1/merchants", json=body, headers=ADMIN)).status_code == 201
    again = await http.post("/v1/merchants", json={"id": merchant}, headers=ADMIN)
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    renamed = await http.patch(f"/v1/merchants/{merchant}", json={"name": "New"}, headers=ADMIN)
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["name"], renamed.json()["email"]) == ("New", "owner@shop.example")
    cleared = await http.patch(f"/v1/merchants/{merchant}", json={"email": None}, headers=ADMIN)
    assert (cleared.json()["name"], cleared.json()["email"]) == ("New", None)
    assert (await http.patch(f"/v1/merchants/{merchant}", json={}, headers=ADMIN)).json()[
        "name"
    ] == "New"
    missing = await http.patch(f"/v1/merchants/{unique('m')}", json={"name": "x"}, headers=ADMIN)
    assert missing.status_code == 404
    assert await audit_trail(pool, "merchant", merchant) == [
        (None, "created", "api-key:bootstrap", None),
        ("active", "active", "api-key:bootstrap", "changed name"),
        ("active", "active", "api-key:bootstrap", "changed email"),
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"id": "a/b"},
        {"id": "m\u0000"},
        {"id": "m" * 300},
        {"id": "ok", "email": "a@x.example, b@y.example"},
        {"id": "ok", "email": "Bank <a@x.example>"},
        {"id": "ok", "name": "line\nbreak"},
        {"id": "ok", "partners": ["no such partner!"]},
        {"id": "ok", "unexpected": 1},
    ],
)
async def test_bad_merchants_are_422(http: httpx.AsyncClient, body: dict[str, object]) -> None:
    response = await http.post("/v1/merchants", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert "database" not in response.text.lower()


async def test_links_need_existing_merchant_and_partner(http: httpx.AsyncClient) -> None:
    merchant = unique("m-l")
    assert (
        await http.post("/v1/merchants", json={"id": merchant}, headers=ADMIN)
    ).status_code == 201
    unknown_partner = await http.put(f"/v1/merchants/{merchant}/partners/nobody", headers=ADMIN)
    assert unknown_partner.status_code == 404
    unknown_merchant = await http.put(f"/v1/merchants/{unique('m')}/partners/x", headers=ADMIN)
    assert unknown_merchant.status_code == 404
    not_linked = await http.delete(f"/v1/merchants/{merchant}/partners/nobody", headers=ADMIN)
    assert not_linked.status_code == 404


async def test_api_keys_are_listed_and_revoked_with_an_audit_trail(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    created = await http.post(
        "/v1/api-keys", json={"name": "ops-alice", "scopes": ["read"]}, headers=ADMIN
    )
    assert created.status_code == 201
    key_id, key = created.json()["id"], created.json()["key"]
    alice = {"authorization": f"Bearer {key}"}
    assert (await http.get("/v1/alerts", headers=alice)).status_code == 200
    listed = {k["id"]: k for k in (await http.get("/v1/api-keys", headers=ADMIN)).json()}
    assert listed[key_id]["name"] == "ops-alice" and listed[key_id]["revoked_at"] is None
    assert "key" not in listed[key_id]
    revoked = await http.delete(f"/v1/api-keys/{key_id}", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert (await http.get("/v1/alerts", headers=alice)).status_code == 401
    again = await http.delete(f"/v1/api-keys/{key_id}", headers=ADMIN)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert (await http.delete("/v1/api-keys/999999999", headers=ADMIN)).status_code == 404
    assert (await http.delete(f"/v1/api-keys/{2**70}", headers=ADMIN)).status_code == 422
    assert await audit_trail(pool, "api_key", str(key_id)) == [
        (None, "active", "api-key:bootstrap", "ops-alice: read"),
        ("active", "revoked", "api-key:bootstrap", None),
    ]


async def test_a_scoped_key_acts_under_its_own_name(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    created = await http.post(
        "/v1/api-keys", json={"name": "ops-bob", "scopes": ["admin"]}, headers=ADMIN
    )
    bob = {"authorization": f"Bearer {created.json()['key']}"}
    merchant = unique("m-bob")
    assert (await http.post("/v1/merchants", json={"id": merchant}, headers=bob)).status_code == 201
    trail = await audit_trail(pool, "merchant", merchant)
    assert trail == [(None, "created", f"api-key:{created.json()['id']}:ops-bob", None)]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/events?merchant_id=m&after_seq=99999999999999999999"),
        ("GET", "/v1/merchants/m%00x"),
        ("GET", "/v1/webhooks/evt%00"),
        ("GET", "/v1/dead-letters?partner_id=a%00b"),
    ],
)
async def test_unstorable_values_are_422_without_database_text(
    http: httpx.AsyncClient, method: str, path: str
) -> None:
    """Numbers beyond 64 bits and NULs are the caller's input: a 422 problem, and what Postgres
    said stays in the server log."""
    response = await http.request(method, path, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "0x00" not in response.text and "invalid byte sequence" not in response.text


async def test_a_partners_onboarding_and_rate_limit_can_be_changed(
    http: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    partner_id = unique("p-set")
    assert (
        await http.post("/v1/partners", json={"id": partner_id}, headers=ADMIN)
    ).status_code == 201
    changed = await http.patch(
        f"/v1/partners/{partner_id}",
        json={"auto_onboard_merchants": True, "rate_limit_per_second": 50},
        headers=ADMIN,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["auto_onboard_merchants"] is True
    assert changed.json()["rate_limit_per_second"] == 50
    back = await http.patch(
        f"/v1/partners/{partner_id}", json={"rate_limit_per_second": None}, headers=ADMIN
    )
    assert back.json()["rate_limit_per_second"] is None
    assert back.json()["auto_onboard_merchants"] is True
    for bad in ({"auto_onboard_merchants": None}, {"auto_onboard_merchants": "yes"}, {"x": 1}):
        refused = await http.patch(f"/v1/partners/{partner_id}", json=bad, headers=ADMIN)
        assert refused.status_code == 422, bad
    missing = await http.patch(f"/v1/partners/{unique('p')}", json={}, headers=ADMIN)
    assert missing.status_code == 404
    reasons = [row[3] for row in await audit_trail(pool, "partner", partner_id)]
    assert reasons == [
        "linked merchants only",
        "changed auto_onboard_merchants=True, rate_limit_per_second=50",
        "changed rate_limit_per_second=None",
    ]
