"""The deliveries part of the operator API refuses bad input with clear 4xx problems."""

from __future__ import annotations

import httpx

ADMIN = {"authorization": "Bearer sb_dev_admin_key"}


async def test_bad_input_is_a_clean_problem(http: httpx.AsyncClient) -> None:
    cases = [
        ("GET", "/v1/endpoints/ep%00x", None, 422),
        ("GET", "/v1/deliveries?status=lost", None, 422),
        ("GET", "/v1/deliveries?since=0001-01-01T00:00:00%2B01:00", None, 422),
        ("GET", "/v1/deliveries?event_id=evt%00", None, 422),
        ("GET", "/v1/endpoints/ep_missing/attempts", None, 404),
        ("POST", "/v1/deliveries/msg_missing/replay", None, 404),
        ("POST", "/v1/deliveries/replay", {"endpoint_id": "x\u0000"}, 422),
        ("POST", "/v1/deliveries/replay", {"rate_per_second": 0}, 422),
        ("POST", "/v1/endpoints", {"merchant_id": "m", "url": "http://127.0.0.1:9/\u0000"}, 422),
        ("POST", "/v1/endpoints/ep_missing/pause", None, 404),
    ]
    for method, path, body, status in cases:
        response = await http.request(method, path, json=body, headers=ADMIN)
        assert response.status_code == status, (path, body, response.text)
        assert response.headers["content-type"] == "application/problem+json", path


async def test_live_secrets_are_capped(http: httpx.AsyncClient) -> None:
    created = await http.post(
        "/v1/endpoints",
        json={"merchant_id": "m-secrets", "url": "http://127.0.0.1:9/hooks"},
        headers=ADMIN,
    )
    endpoint_id = created.json()["id"]
    rotate = f"/v1/endpoints/{endpoint_id}/secret/rotate"
    for _ in range(9):
        assert (await http.post(rotate, headers=ADMIN)).status_code == 200
    refused = await http.post(rotate, headers=ADMIN)
    assert refused.status_code == 409
    replaced = await http.post(rotate, params={"overlap_seconds": 0}, headers=ADMIN)
    assert replaced.status_code == 200
    assert (await http.post(rotate, headers=ADMIN)).status_code == 200
