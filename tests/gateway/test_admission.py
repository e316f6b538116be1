"""Who gets in (RELIABILITY S1, S3, S4, S5): auth of every kind, Origin, size, compression and
floods."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import asyncpg
import httpx
import jwt
import pytest
from pydantic import SecretStr
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from core.settings import Settings
from gateway.server import CLIENT_MESSAGE_BURST_SECONDS, Gateway
from tests.gateway.support import (
    ORIGIN,
    Recorder,
    append_events,
    merchant_id,
    running_gateway,
    token_for,
    ws_url,
)


async def _closed_with(
    gateway: Gateway, first_message: str | None, *, origin: Origin = ORIGIN
) -> tuple[int, float]:
    """Connect, optionally send one message, and return the close code and seconds to close."""
    started = time.monotonic()
    async with connect(ws_url(gateway.port), origin=origin, compression=None) as ws:
        if first_message is not None:
            await ws.send(first_message)
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(15):
                while True:
                    message = json.loads(await ws.recv())
                    assert "seq" not in message, "an unauthenticated client received an event"
        assert ws.close_code is not None
        return ws.close_code, time.monotonic() - started


def _auth(token: str) -> str:
    return json.dumps({"type": "auth", "token": token})


async def test_auth_failures_close_with_1008(gateway: Gateway, gw_settings: Settings) -> None:
    """No token, a garbage token, a forged or expired one, another audience, alg none: 1008."""
    secret = gw_settings.dashboard_token_secret.get_secret_value()
    merchant = merchant_id()
    now = time.time()
    forged = token_for(
        gw_settings.model_copy(update={"dashboard_token_secret": SecretStr("x" * 40)}), merchant
    )
    expired = token_for(gw_settings, merchant, ttl=60, now=now - 120)
    wrong_audience = jwt.encode(
        {
            "sub": merchant,
            "aud": "someone-else",
            "scope": "dashboard:read",
            "iat": int(now),
            "exp": int(now) + 60,
        },
        secret,
        algorithm="HS256",
    )
    no_scope = jwt.encode(
        {"sub": merchant, "aud": "switchboard-gateway", "iat": int(now), "exp": int(now) + 60},
        secret,
        algorithm="HS256",
    )
    unsigned = jwt.encode(
        {
            "sub": merchant,
            "aud": "switchboard-gateway",
            "scope": "dashboard:read",
            "iat": int(now),
            "exp": int(now) + 60,
        },
        None,
        algorithm="none",
    )
    for message in [
        json.dumps({"type": "auth"}),
        _auth(""),
        _auth("not-a-token"),
        _auth(forged),
        _auth(expired),
        _auth(wrong_audience),
        _auth(no_scope),
        _auth(unsigned),
        json.dumps({"type": "ping"}),
        "not json",
        json.dumps({"type": "auth", "token": token_for(gw_settings, merchant), "since_seq": -1}),
    ]:
        code, _ = await _closed_with(gateway, message)
        assert code == 1008, message


async def test_silent_client_is_closed_within_the_auth_timeout(
    gateway: Gateway, gw_settings: Settings
) -> None:
    """A connection that never authenticates is closed with 1008 soon after the timeout."""
    code, seconds = await _closed_with(gateway, None)
    assert code == 1008
    assert (
        gw_settings.gateway_auth_timeout_seconds
        <= seconds
        < gw_settings.gateway_auth_timeout_seconds + 3
    )


async def test_header_auth_refuses_bad_tokens_before_the_upgrade(
    gateway: Gateway, gw_settings: Settings
) -> None:
    """With ``Authorization`` in the handshake a bad token is a 401 and no WebSocket opens."""
    merchant = merchant_id()
    for header in [
        "Bearer nope",
        "Basic abc",
        f"Bearer {token_for(gw_settings, merchant, ttl=60, now=time.time() - 120)}",
    ]:
        with pytest.raises(InvalidStatus) as refused:
            await connect(
                ws_url(gateway.port), origin=ORIGIN, additional_headers={"Authorization": header}
            )
        assert refused.value.response.status_code == 401


async def test_header_auth_opens_the_merchant_feed(
    gateway: Gateway, gw_settings: Settings, gw_pool: asyncpg.Pool
) -> None:
    """A valid token in the handshake header works without an auth message, and
    ``Switchboard-Since-Seq`` resumes from that seq."""
    merchant = merchant_id()
    await append_events(gw_pool, None, merchant, 3)
    headers = {
        "Authorization": f"Bearer {token_for(gw_settings, merchant)}",
        "Switchboard-Since-Seq": "1",
    }
    async with connect(ws_url(gateway.port), origin=ORIGIN, additional_headers=headers) as ws:
        welcome = json.loads(await ws.recv())
        assert welcome["control"] == "welcome" and welcome["merchant_id"] == merchant
        assert welcome["since_seq"] == 1
        assert [json.loads(await ws.recv()).get("seq") for _ in range(3)] == [2, 3, None]


async def test_tokens_in_the_url_are_refused(gateway: Gateway, gw_settings: Settings) -> None:
    """A query string on /ws is refused: URLs end up in logs."""
    with pytest.raises(InvalidStatus) as refused:
        await connect(
            f"{ws_url(gateway.port)}?token={token_for(gw_settings, merchant_id())}", origin=ORIGIN
        )
    assert refused.value.response.status_code == 400


async def test_origin_allow_list_is_exact(gateway: Gateway) -> None:
    """Only exact allow-list entries pass; look-alikes, ``null`` and suffix tricks get 403."""
    for origin in [
        "https://evil.example",
        "null",
        "http://127.0.0.1:8400.evil.io",
        "http://evil.io/http://127.0.0.1:8400",
        "http://127.0.0.1:84000",
        "https://127.0.0.1:8400",
        "HTTP://127.0.0.1:8400x",
    ]:
        with pytest.raises(InvalidStatus) as refused:
            await connect(ws_url(gateway.port), origin=Origin(origin))
        assert refused.value.response.status_code == 403, origin
    async with connect(ws_url(gateway.port), origin=ORIGIN):
        pass


async def test_missing_origin_follows_the_documented_policy(gw_settings: Settings, gw_pool) -> None:
    """No Origin (a non-browser client) is allowed by default and refused when configured so."""
    async with running_gateway(gw_settings, gw_pool) as gateway, connect(ws_url(gateway.port)):
        pass
    strict = gw_settings.model_copy(update={"gateway_allow_missing_origin": False})
    async with running_gateway(strict, gw_pool) as gateway:
        with pytest.raises(InvalidStatus) as refused:
            await connect(ws_url(gateway.port))
        assert refused.value.response.status_code == 403


async def test_oversize_frame_closes_with_1009_and_compression_is_off(
    gateway: Gateway, gw_settings: Settings
) -> None:
    """A frame of max + 1 bytes closes with 1009; permessage-deflate is never negotiated."""
    recorder = await Recorder(ws_url(gateway.port), token_for(gw_settings, merchant_id())).start()
    await recorder.wait_live()
    assert recorder.connection is not None
    assert recorder.connection.response is not None
    assert "Sec-WebSocket-Extensions" not in recorder.connection.response.headers
    await recorder.connection.send("x" * (gw_settings.gateway_max_message_bytes + 1))
    assert await recorder.wait_closed() == 1009
    # A client offering deflate gets no extension back either.
    async with connect(ws_url(gateway.port), origin=ORIGIN, compression="deflate") as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers


async def test_message_flood_closes_with_1008(gateway: Gateway, gw_settings: Settings) -> None:
    """Pings at 10x the per-connection allowance close the connection with 1008."""
    recorder = await Recorder(ws_url(gateway.port), token_for(gw_settings, merchant_id())).start()
    await recorder.wait_live()
    assert recorder.connection is not None
    per_minute = gw_settings.gateway_client_messages_per_minute
    started = time.monotonic()
    with contextlib.suppress(ConnectionClosed):
        for _ in range(per_minute * 10):
            await recorder.connection.send(json.dumps({"type": "ping"}))
    assert await recorder.wait_closed() == 1008
    elapsed = time.monotonic() - started
    pongs = [c for c in recorder.controls if c["control"] == "pong"]
    # The burst is answered, then at most what the rate refilled while the flood lasted.
    burst = per_minute / 60 * CLIENT_MESSAGE_BURST_SECONDS
    assert int(burst) <= len(pongs) <= burst + per_minute / 60 * elapsed, (len(pongs), elapsed)


async def test_handshake_floods_get_429_with_retry_after(gw_settings: Settings, gw_pool) -> None:
    """200 handshakes at once from one source: the excess gets 429 and a Retry-After."""
    # 1/s (burst 2): the assertion holds even if a loaded machine makes the 200 take 25 s.
    limited = gw_settings.model_copy(update={"gateway_connect_rate_per_source": 1.0})
    async with running_gateway(limited, gw_pool) as gateway, httpx.AsyncClient() as http:

        async def handshake() -> httpx.Response:
            return await http.get(
                f"http://127.0.0.1:{gateway.port}/ws",
                headers={
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Origin": ORIGIN,
                },
            )

        statuses = []
        for _ in range(200):
            try:
                statuses.append((await handshake()).status_code)
            except httpx.HTTPError:
                statuses.append(101)
        assert statuses.count(429) >= 170
        response = await handshake()
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1


async def test_per_merchant_connection_cap_closes_with_1013(gw_settings: Settings, gw_pool) -> None:
    """Beyond the per-merchant cap a new connection is closed with 1013 (try again later)."""
    capped = gw_settings.model_copy(update={"gateway_max_connections_per_merchant": 10})
    async with running_gateway(capped, gw_pool) as gateway:
        merchant = merchant_id()
        clients = [
            await Recorder(ws_url(gateway.port), token_for(gw_settings, merchant)).start()
            for _ in range(10)
        ]
        for client in clients:
            await client.wait_live()
        extra = await Recorder(ws_url(gateway.port), token_for(gw_settings, merchant)).start()
        assert await extra.wait_closed() == 1013
        other = await Recorder(ws_url(gateway.port), token_for(gw_settings, merchant_id())).start()
        await other.wait_live()
        for client in [*clients, other]:
            await client.stop()


async def test_health_and_metrics(gateway: Gateway) -> None:
    """/healthz reports Redis and connections; /metrics exposes the gateway's series."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}") as http:
        health = (await http.get("/healthz")).json()
        assert health["redis"] is True and health["status"] == "ok"
        metrics = (await http.get("/metrics")).text
    for name in [
        "switchboard_gateway_connections",
        "switchboard_gateway_subscriptions",
        "switchboard_gateway_events_in_total",
        "switchboard_gateway_deliveries_total",
        "switchboard_gateway_disconnects_total",
        "switchboard_gateway_resumes_total",
        "switchboard_gateway_lag_seconds",
    ]:
        assert name in metrics
