"""The play endpoint: a real receiver that verifies each delivery's signature and keeps it, and
its registration, which leaves a merchant exactly one play endpoint whose secret is known."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core.signing import generate_secret, sign_headers
from devstack.play import (
    PLAY_DESCRIPTION,
    PlayEndpoint,
    PlayReceiver,
    check_signature,
    register_play_endpoint,
)
from devstack.ports import free_port
from tests.support import Partner, wait_for

ADMIN = {"authorization": "Bearer sb_dev_admin_key"}


@pytest.fixture
def play() -> Iterator[PlayReceiver]:
    with PlayReceiver(free_port()) as receiver:
        yield receiver


def _post(receiver: PlayReceiver, secret: str, body: bytes, **headers: str) -> httpx.Response:
    signed = sign_headers(secret, f"msg_{uuid.uuid4().hex}", body, now=int(time.time()))
    return httpx.post(receiver.endpoint_url, content=body, headers={**signed, **headers})


def test_the_receiver_keeps_what_arrived_with_its_verdict(play: PlayReceiver) -> None:
    """Signed with the endpoint's secret it is verified; with another, or before the secret is
    known, it is kept as not verified; every answer is a 200 and the page lists them."""
    secret, other = generate_secret(), generate_secret()
    body = b'{"type":"payment.succeeded","timestamp":"2026-01-01T00:00:00+00:00","data":{}}'
    assert _post(play, secret, body).json() == {"received": True, "verified": False}
    play.use_secrets([secret])
    assert _post(play, secret, body).json() == {"received": True, "verified": True}
    assert _post(play, other, body).status_code == 200
    received = play.received()
    assert [item["verified"] for item in received] == [False, True, False]
    assert "not registered" in received[0]["detail"]
    assert received[1]["detail"] == "standardwebhooks"
    assert received[1]["type"] == "payment.succeeded"
    assert received[1]["headers"]["webhook-id"] == received[1]["webhook_id"]
    assert httpx.get(f"{play.url}/_received").json() == received
    page = httpx.get(play.url).text
    assert page.count("<tr><td>") == 3 and page.count("not verified") == 2


def test_our_verifier_is_the_fallback_and_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the standardwebhooks package, core.signing gives the same verdicts."""
    secret = generate_secret()
    body = b'{"type":"x"}'
    headers = sign_headers(secret, "msg_1", body, now=int(time.time()))
    with_reference = check_signature([secret], headers, body, now=time.time())
    monkeypatch.setattr("devstack.play.importlib.util.find_spec", lambda _: None)
    assert with_reference == (True, "standardwebhooks")
    assert check_signature([secret], headers, body, now=time.time()) == (True, "core.signing")
    refused = check_signature([generate_secret()], headers, body, now=time.time())
    assert refused[0] is False and refused[1].startswith("core.signing")


def _play_endpoints(operator: httpx.Client, merchant: str) -> list[dict[str, Any]]:
    listed = operator.get("/v1/endpoints", params={"merchant_id": merchant}).json()
    return [ep for ep in listed if ep["description"] == PLAY_DESCRIPTION]


async def test_a_payment_arrives_at_the_play_endpoint_verified(
    api_url: str, pipeline: None, partner: Partner, play: PlayReceiver
) -> None:
    """Registered through the operator API, the play endpoint receives the merchant's payment
    signed with its secret; registering again keeps it, or replaces one whose secret is lost."""
    merchant, payment_id = f"m-play-{uuid.uuid4().hex[:8]}", f"pay_{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=api_url, headers=ADMIN, timeout=30) as operator:
        endpoint = await asyncio.to_thread(
            register_play_endpoint, operator, merchant, play.endpoint_url, None
        )
        play.use_secrets([endpoint.secret])
        try:
            await partner.send(
                "payment.succeeded",
                merchant_id=merchant,
                payment_id=payment_id,
                amount=1250,
                currency="EUR",
            )

            async def arrived() -> list[dict[str, Any]]:
                return play.received()

            (item,) = await wait_for(arrived, what="a delivery at the play endpoint")
            assert item["verified"] is True, item["detail"]
            assert item["type"] == "payment.succeeded"
            assert item["body"]["data"]["payment_id"] == payment_id

            again = await asyncio.to_thread(
                register_play_endpoint, operator, merchant, play.endpoint_url, endpoint
            )
            assert again == endpoint
            lost = await asyncio.to_thread(
                register_play_endpoint, operator, merchant, play.endpoint_url, None
            )
            assert lost.endpoint_id != endpoint.endpoint_id
            listed = await asyncio.to_thread(_play_endpoints, operator, merchant)
            assert [ep["id"] for ep in listed] == [lost.endpoint_id]
            endpoint = lost
        finally:
            await asyncio.to_thread(operator.delete, f"/v1/endpoints/{endpoint.endpoint_id}")


async def test_a_moved_receiver_keeps_its_endpoint(api_url: str) -> None:
    """Registered again on another port, the known endpoint keeps its id and takes the URL."""
    merchant = f"m-play-{uuid.uuid4().hex[:8]}"

    def register_then_move() -> None:  # blocking calls, off the loop the api serves from
        with httpx.Client(base_url=api_url, headers=ADMIN, timeout=30) as operator:
            first = register_play_endpoint(operator, merchant, "http://127.0.0.1:9/hooks", None)
            moved = register_play_endpoint(operator, merchant, "http://127.0.0.1:10/hooks", first)
            assert moved == PlayEndpoint(first.endpoint_id, first.secret)
            (listed,) = _play_endpoints(operator, merchant)
            assert listed["url"] == "http://127.0.0.1:10/hooks"
            operator.delete(f"/v1/endpoints/{first.endpoint_id}")

    await asyncio.to_thread(register_then_move)
