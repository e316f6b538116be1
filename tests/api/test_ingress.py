"""The partner ingress over real HTTP: every refusal is a clean problem, every 2xx is recorded."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from core.settings import Settings
from core.signing import generate_secret, sign_headers
from tests.support import Partner, add_partner, running_api, wait_settled

PAYMENT = {"payment_id": "pay_1", "merchant_id": "m_1", "amount": 100, "currency": "EUR"}


def payment_body(**overrides: object) -> bytes:
    return json.dumps({"type": "payment.succeeded", "data": {**PAYMENT, **overrides}}).encode()


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, object] = response.json()
    assert problem["status"] == status
    assert problem["title"] and problem["detail"]
    return problem


async def rows_for(pool: asyncpg.Pool, partner: Partner) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM webhooks WHERE partner_id = $1", partner.id
    )
    return count


async def test_valid_webhook_is_recorded_before_the_202(
    partner: Partner, pool: asyncpg.Pool
) -> None:
    """A 202 carries the event id and a trace URL, and the row is already in Postgres."""
    response = await partner.post(payment_body())
    assert response.status_code == 202
    body = response.json()
    assert body["duplicate"] is False
    assert body["trace_url"].endswith(f"/v1/webhooks/{body['event_id']}")
    row = await pool.fetchrow("SELECT * FROM webhooks WHERE event_id = $1", body["event_id"])
    assert row is not None
    assert row["event_type"] == "payment.succeeded"
    assert row["entity_key"] == "payment:pay_1"
    assert row["merchant_id"] == "m_1"


@pytest.mark.parametrize("partner_id", ["nobody", "%00", "a%20b", "x" * 64])
async def test_unknown_partner_answers_like_a_bad_signature(
    http: httpx.AsyncClient, partner: Partner, partner_id: str
) -> None:
    """A webhook for a partner that does not (or cannot) exist gets exactly the answer a known
    partner's forged webhook gets, so partner ids cannot be enumerated."""
    body = payment_body()
    forged = sign_headers(generate_secret(), f"msg_{uuid.uuid4().hex}", body, now=int(time.time()))
    forged["content-type"] = "application/json"
    for_unknown = await http.post(f"/webhooks/{partner_id}", content=body, headers=forged)
    for_known = await http.post(f"/webhooks/{partner.id}", content=body, headers=forged)
    assert_problem(for_unknown, 401)
    assert for_unknown.json() == for_known.json()


@pytest.mark.parametrize(
    "changes",
    [
        {"webhook-signature": None},
        {"webhook-id": None, "webhook-timestamp": None, "webhook-signature": None},
        {"webhook-signature": "garbage"},
        {"webhook-signature": "v1,!!!notbase64"},
        {"webhook-signature": "v1," + "A" * 44},
        {"webhook-signature": "v1a,abc"},
        {"webhook-timestamp": "not-a-number"},
        {"webhook-id": "msg_other"},
    ],
)
async def test_bad_signatures_are_401(partner: Partner, changes: dict[str, str | None]) -> None:
    """Missing, malformed or non-matching signature headers get 401, never a 5xx."""
    body = payment_body()
    headers: dict[str, str] = {
        "content-type": "application/json",
        **sign_headers(partner.secret, "msg_x", body, now=int(time.time())),
    }
    for name, value in changes.items():
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    response = await partner.http.post(f"/webhooks/{partner.id}", content=body, headers=headers)
    assert_problem(response, 401)


async def test_signature_by_another_secret_is_401(partner: Partner) -> None:
    """A body signed with a secret that is not the partner's is refused."""
    impostor = Partner(partner.id, "whsec_" + "QUJD" * 8, partner.http)
    assert_problem(await impostor.post(payment_body()), 401)


@pytest.mark.parametrize("skew", [-301, 301])
async def test_timestamps_outside_tolerance_are_400(partner: Partner, skew: int) -> None:
    """A correctly signed webhook more than 5 minutes old or early is refused with 400."""
    response = await partner.post(payment_body(), timestamp=int(time.time()) + skew)
    assert_problem(response, 400)


@pytest.mark.parametrize("skew", [-290, 290])
async def test_timestamps_inside_tolerance_are_accepted(partner: Partner, skew: int) -> None:
    """Clock skew within the tolerance, either way, is accepted."""
    response = await partner.post(payment_body(), timestamp=int(time.time()) + skew)
    assert response.status_code == 202


def balance_body(as_of: str) -> bytes:
    data = {"merchant_id": "m_1", "available": 1, "pending": 0, "currency": "EUR", "as_of": as_of}
    return json.dumps({"type": "balance.updated", "data": data}).encode()


@pytest.mark.parametrize(
    "as_of",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59Z", "1999-12-31T23:59:59Z", "2026-01-01"],
)
async def test_balance_as_of_out_of_range_is_422(partner: Partner, as_of: str) -> None:
    """An ``as_of`` that Postgres cannot store, from the distant past, or without a timezone."""
    problem = assert_problem(await partner.post(balance_body(as_of)), 422)
    assert "as_of" in str(problem["detail"])


async def test_balance_as_of_beyond_the_clock_tolerance_is_422(
    partner: Partner, settings: Settings
) -> None:
    """A future ``as_of`` would win last-writer-wins forever: only the clock skew is allowed."""
    tolerance = settings.signature_tolerance_seconds
    too_far = datetime.fromtimestamp(time.time() + tolerance + 60, UTC).isoformat()
    within = datetime.fromtimestamp(time.time() + tolerance - 60, UTC).isoformat()
    problem = assert_problem(await partner.post(balance_body(too_far)), 422)
    assert "as_of" in str(problem["detail"])
    assert (await partner.post(balance_body(within))).status_code == 202


async def test_non_json_media_type_is_415(partner: Partner) -> None:
    """A body sent as text/plain is refused with 415."""
    assert_problem(await partner.post(payment_body(), content_type="text/plain"), 415)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"type": 5, "data": {}}', '"type"'),
        (b'{"type": "payment.succeeded"}', '"data"'),
        (b'{"type": "payment.succeeded", "data": {"payment_id": "p"}}', "data."),
        (payment_body(amount=10.5), "data.amount"),
        (payment_body(amount=-1), "data.amount"),
        (payment_body(currency="euro"), "data.currency"),
        (b'{"type": "x", "data": {"v": NaN}}', "not valid JSON"),
        (b'{"type": "x", "data": {"v": 1e400}}', "not valid JSON"),
        (b'{"type": "x", "data": {"v": "\\u0000"}}', "NUL"),
        (b'{"type": "x", "data": {"v": "\\ud800"}}', "surrogate"),
        (b"\xff\xfe\x00", "not UTF-8"),
        # The Standard Webhooks body is UTF-8 text: no UTF-16 or UTF-32, no byte-order mark.
        (payment_body().decode().encode("utf-16"), "not UTF-8"),
        (payment_body().decode().encode("utf-16-le"), "not valid JSON"),
        (payment_body().decode().encode("utf-32"), "not UTF-8"),
        (b"\xef\xbb\xbf" + payment_body(), "byte-order mark"),
        # One id format everywhere: nothing the operator API could not address.
        (payment_body(merchant_id="a/b"), "data.merchant_id"),
        (payment_body(merchant_id="m\u0000"), "data.merchant_id"),
        (payment_body(merchant_id="m" * 300), "data.merchant_id"),
        (payment_body(merchant_id="m x"), "data.merchant_id"),
        (payment_body(payment_id="../p"), "data.payment_id"),
        # One address, no list and no display name.
        (payment_body(customer_email="a@x.example, b@y.example"), "data.customer_email"),
        (payment_body(customer_email="Bank <a@x.example>"), "data.customer_email"),
        (payment_body(customer_email="a@x.example\r\nBcc: c@z.example"), "data.customer_email"),
        (payment_body(amount=2**64), "data.amount"),
        (payment_body(amount=10**400), "data.amount"),
    ],
)
async def test_malformed_envelopes_are_422(partner: Partner, body: bytes, fragment: str) -> None:
    """Bodies that are not a valid envelope, or carry invalid event data, get 422 saying why."""
    problem = assert_problem(await partner.post(body), 422)
    assert fragment in str(problem["detail"])


async def test_oversized_body_is_413_with_content_length(partner: Partner) -> None:
    """A body one byte over the limit is refused with 413 before it is read."""
    body = payment_body(padding="x" * (256 * 1024))
    assert_problem(await partner.post(body), 413)


async def test_oversized_chunked_body_is_413(partner: Partner, api_url: str) -> None:
    """A chunked body without Content-Length is cut off at the limit with 413."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"x" * 8192

    body_id = f"msg_{uuid.uuid4().hex}"
    headers = sign_headers(partner.secret, body_id, b"", now=int(time.time()))
    async with httpx.AsyncClient(base_url=api_url) as client:
        response = await client.post(
            f"/webhooks/{partner.id}",
            content=chunks(),
            headers={"content-type": "application/json", **headers},
        )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413)


async def test_body_at_the_limit_is_accepted(partner: Partner) -> None:
    """A body of exactly the size limit is accepted (unknown type, stored as received)."""
    envelope: dict[str, Any] = {"type": "partner.custom", "data": {"padding": ""}}
    filler = 256 * 1024 - len(json.dumps(envelope).encode())
    envelope["data"]["padding"] = "x" * filler
    body = json.dumps(envelope).encode()
    assert len(body) == 256 * 1024
    assert (await partner.post(body)).status_code == 202


@pytest.mark.usefixtures("pipeline")
async def test_duplicates_return_200_with_the_original_event(
    partner: Partner, pool: asyncpg.Pool
) -> None:
    """1,000 sequential and 50 concurrent repeats all answer with the original event id."""
    body = payment_body(payment_id="pay_dup")
    first = await partner.post(body, webhook_id="msg_dup")
    assert first.status_code == 202
    event_id = first.json()["event_id"]
    for _ in range(1000):
        again = await partner.post(body, webhook_id="msg_dup")
        assert again.status_code == 200
        assert again.json() == {**first.json(), "duplicate": True}
    burst = await asyncio.gather(*(partner.post(body, webhook_id="msg_dup") for _ in range(50)))
    assert {r.status_code for r in burst} == {200}
    assert {r.json()["event_id"] for r in burst} == {event_id}
    assert await rows_for(pool, partner) == 1
    await wait_settled(pool, [event_id])
    effects = await pool.fetchval(
        "SELECT count(*) FROM events e JOIN webhooks w USING (event_id) WHERE w.partner_id = $1",
        partner.id,
    )
    assert effects == 1


async def test_concurrent_first_deliveries_record_one_row(
    partner: Partner, pool: asyncpg.Pool
) -> None:
    """Fifty simultaneous first deliveries of one webhook id give one 202 and 49 duplicates."""
    body = payment_body(payment_id="pay_race")
    burst = await asyncio.gather(*(partner.post(body, webhook_id="msg_race") for _ in range(50)))
    assert sorted(r.status_code for r in burst) == [200] * 49 + [202]
    assert len({r.json()["event_id"] for r in burst}) == 1
    assert await rows_for(pool, partner) == 1


async def test_same_id_with_another_body_is_409(partner: Partner, pool: asyncpg.Pool) -> None:
    """A webhook id reused with a different body is refused and changes nothing."""
    assert (await partner.post(payment_body(amount=1), webhook_id="msg_c")).status_code == 202
    assert_problem(await partner.post(payment_body(amount=2), webhook_id="msg_c"), 409)
    assert await rows_for(pool, partner) == 1


async def test_rate_limit_is_429_with_retry_after(
    pool: asyncpg.Pool, http: httpx.AsyncClient
) -> None:
    """Past its per-second limit a partner gets 429 with Retry-After, and nothing is recorded."""
    limited = await add_partner(pool, http, rate_limit_per_second=5)
    responses = await asyncio.gather(*(limited.post(payment_body()) for _ in range(12)))
    statuses = sorted(r.status_code for r in responses)
    refused = [r for r in responses if r.status_code == 429]
    assert statuses.count(202) >= 5
    assert refused, statuses
    assert refused[0].headers["retry-after"] == "1"
    assert_problem(refused[0], 429)
    assert await rows_for(pool, limited) == statuses.count(202)


async def test_slow_body_is_cut_off_with_408(partner: Partner, settings: Settings) -> None:
    """A client that stops sending its body mid-way gets 408 once the body timeout passes."""
    impatient = settings.model_copy(update={"body_timeout_seconds": 0.5})
    headers = sign_headers(partner.secret, "msg_slow", b"", now=int(time.time()))
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    async with running_api(impatient) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                f"POST /webhooks/{partner.id} HTTP/1.1\r\nhost: {host}\r\n"
                f"content-type: application/json\r\ncontent-length: 100\r\n{head}\r\n{{".encode()
            )
            await writer.drain()
            started = time.monotonic()
            status_line = await asyncio.wait_for(reader.readline(), timeout=5)
            elapsed = time.monotonic() - started
        finally:
            writer.close()
            await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    assert 0.4 < elapsed < 2.0
