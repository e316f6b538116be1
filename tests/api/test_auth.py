"""Operator API authentication: no key, unknown key and missing scope are refused cleanly."""

from __future__ import annotations

import httpx

ADMIN = {"authorization": "Bearer sb_dev_admin_key"}


async def test_operator_routes_need_a_key(http: httpx.AsyncClient) -> None:
    """Without a key the operator API answers 401 as a problem."""
    response = await http.get("/v1/alerts")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_unknown_keys_are_401(http: httpx.AsyncClient) -> None:
    """A key that was never issued is refused."""
    response = await http.get("/v1/alerts", headers={"authorization": "Bearer sb_nope"})
    assert response.status_code == 401


async def test_scoped_keys_reach_only_their_scopes(http: httpx.AsyncClient) -> None:
    """A read-only key can read but not replay or manage partners."""
    created = await http.post(
        "/v1/api-keys", json={"name": "viewer", "scopes": ["read"]}, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    viewer = {"authorization": f"Bearer {created.json()['key']}"}
    assert (await http.get("/v1/alerts", headers=viewer)).status_code == 200
    replay = await http.post("/v1/dead-letters/replay", json={}, headers=viewer)
    assert replay.status_code == 403
    assert "replay" in replay.json()["detail"]
    assert (await http.get("/v1/partners", headers=viewer)).status_code == 403


async def test_invalid_operator_input_is_a_422_problem(http: httpx.AsyncClient) -> None:
    """Bad request bodies get 422 problems naming the field."""
    response = await http.post("/v1/partners", json={"id": "bad id!"}, headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("body.id")


async def test_unknown_routes_are_404_problems(http: httpx.AsyncClient) -> None:
    """Even a path that does not exist answers with a problem document."""
    response = await http.get("/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_a_bad_key_is_401_before_the_body_is_even_parsed(http: httpx.AsyncClient) -> None:
    """Malformed JSON with an unknown key gets 401, not a 422 about the JSON: callers without a
    key learn nothing about the route's validation."""
    for body in (b"{not json", b'{"id": "ok"}'):
        response = await http.post(
            "/v1/partners",
            content=body,
            headers={"authorization": "Bearer sb_nope", "content-type": "application/json"},
        )
        assert response.status_code == 401, response.text
    revoked_scope = await http.post(
        "/v1/partners",
        content=b"{not json",
        headers={**ADMIN, "content-type": "application/json"},
    )
    assert revoked_scope.status_code == 422
