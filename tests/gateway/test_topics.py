"""Every topic kind (merchant, desk, request) through one mechanism: gapless resume by seq,
tokens that open exactly one topic, and exchange transitions reaching the desk and the
request's own watcher with seq continuity."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import asyncpg
import jwt
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from core import exchange, feeds
from core.dashboard_tokens import ALGORITHM, AUDIENCE, SCOPE, TOPIC_SCOPE
from core.feeds import Topic, TopicKind
from core.settings import Settings
from gateway.server import Gateway
from tests.gateway.support import (
    ORIGIN,
    Recorder,
    add_exchange_request,
    add_merchant,
    append_events,
    append_topic_events,
    merchant_id,
    token_for,
    topic_head,
    topic_token,
    ws_url,
)


async def _request(pool: asyncpg.Pool, merchant: str) -> str:
    """A new exchange request (created → pending): its id."""
    return str((await add_exchange_request(pool, merchant))["id"])


async def _publish_all(pool: asyncpg.Pool, redis: Redis, request_id: str) -> None:
    async with pool.acquire() as conn:
        row = await exchange.show(conn, request_id)
    ids = exchange.transition_event_ids(row, created=True)
    await feeds.publish_events(pool, redis, ids)


async def _append(pool: asyncpg.Pool, redis: Redis | None, topic: Topic, count: int) -> None:
    if topic.kind is TopicKind.MERCHANT:
        await append_events(pool, redis, topic.id, count)
    else:
        await append_topic_events(pool, redis, topic, count)


def _token(settings: Settings, topic: Topic) -> str:
    if topic.kind is TopicKind.MERCHANT:
        return token_for(settings, topic.id)
    return topic_token(settings, topic)


@pytest.mark.parametrize("kind", list(TopicKind))
async def test_each_kind_resumes_gaplessly_after_a_reconnect(
    kind: TopicKind,
    gateway: Gateway,
    gw_settings: Settings,
    gw_pool: asyncpg.Pool,
    gw_redis: Redis,
) -> None:
    """A client of any topic kind gets live events, disconnects, misses events (some published,
    some only committed), reconnects with its last seq: every seq once, in order, then live."""
    topic = {
        TopicKind.MERCHANT: Topic.merchant(merchant_id()),
        TopicKind.DESK: Topic.desk(),
        TopicKind.REQUEST: Topic.request(f"exr_{uuid.uuid4().hex}"),
    }[kind]
    start = await topic_head(gw_pool, topic)
    token = _token(gw_settings, topic)
    first = await Recorder(ws_url(gateway.port), token, since_seq=start).start()
    await first.wait_live()
    await _append(gw_pool, gw_redis, topic, 5)
    await first.wait_seq(start + 5)
    await first.stop()
    await _append(gw_pool, gw_redis, topic, 3)
    await _append(gw_pool, None, topic, 4)  # never published: only Postgres has them
    second = await Recorder(ws_url(gateway.port), token, since_seq=first.last_seq).start()
    await second.wait_live()
    await _append(gw_pool, gw_redis, topic, 2)
    await second.wait_seq(start + 14)
    await second.stop()
    first.assert_gapless(start + 1, start + 5)
    second.assert_gapless(start + 6, start + 14)
    for event in first.events + second.events:
        named = event.get("merchant_id") if kind is TopicKind.MERCHANT else event.get("topic")
        assert named == topic.source.name(topic)
    welcome = second.controls[0]
    assert welcome["control"] == "welcome" and welcome["topic"] == topic.key
    assert welcome["since_seq"] == start + 5


async def test_no_topic_sees_another_topics_events(
    gateway: Gateway, gw_settings: Settings, gw_pool: asyncpg.Pool, gw_redis: Redis
) -> None:
    """Desk, request A, request B and a merchant client side by side while all four topics get
    events: each sees exactly its own topic's; a request's watcher never sees the desk's
    operator names; B's token never sees A."""
    merchant = await add_merchant(gw_pool)
    a, b = await _request(gw_pool, merchant), await _request(gw_pool, merchant)
    topics = [Topic.desk(), Topic.request(a), Topic.request(b), Topic.merchant(merchant)]
    clients = {
        topic: await Recorder(
            ws_url(gateway.port),
            _token(gw_settings, topic),
            since_seq=await topic_head(gw_pool, topic),
        ).start()
        for topic in topics
    }
    for client in clients.values():
        await client.wait_live()
    heads = {topic: await topic_head(gw_pool, topic) for topic in topics}
    actor = exchange.Actor("api-key:1:canary-operator")
    async with gw_pool.acquire() as conn:
        await exchange.claim(conn, a, actor=actor)
        await exchange.claim(conn, b, actor=actor)
        await exchange.release(conn, b, actor=actor, reason="canary reason")
    for request_id in (a, b):
        await _publish_all(gw_pool, gw_redis, request_id)
    await append_events(gw_pool, gw_redis, merchant, 5)
    for topic in topics:
        await _append(gw_pool, gw_redis, topic, 3)
    expected = {topic: await topic_head(gw_pool, topic) for topic in topics}
    assert expected[Topic.request(a)] - heads[Topic.request(a)] == 1 + 3
    assert expected[Topic.request(b)] - heads[Topic.request(b)] == 2 + 3
    assert expected[Topic.desk()] - heads[Topic.desk()] == 3 + 3
    for topic, client in clients.items():
        await client.wait_seq(expected[topic])
    for topic, client in clients.items():
        client.assert_gapless(heads[topic] + 1, expected[topic])
        if topic.kind is TopicKind.MERCHANT:
            assert {e["merchant_id"] for e in client.events} == {merchant}
            assert all("topic" not in e for e in client.events)
        else:
            assert {e["topic"] for e in client.events} == {topic.key}
            assert all("merchant_id" not in e for e in client.events)
    exchange_ids = {
        e["data"]["request"]["id"] for e in clients[Topic.desk()].events if "request" in e["data"]
    }
    assert {a, b} <= exchange_ids
    for request_id in (a, b):
        seen = clients[Topic.request(request_id)].events
        ids = {e["data"]["request"]["id"] for e in seen if "request" in e["data"]}
        assert ids == {request_id}
        assert "canary-operator" not in json.dumps(seen) and "canary reason" not in json.dumps(seen)
    assert "canary-operator" in json.dumps(clients[Topic.desk()].events)
    for client in clients.values():
        await client.stop()


def _forged(settings: Settings, subject: str, scope: str) -> str:
    now = int(time.time())
    claims = {"sub": subject, "aud": AUDIENCE, "scope": scope, "iat": now, "exp": now + 600}
    return jwt.encode(claims, settings.dashboard_token_secret.get_secret_value(), ALGORITHM)


async def test_a_merchant_token_cannot_reach_the_desk(
    gateway: Gateway, gw_settings: Settings, gw_pool: asyncpg.Pool, gw_redis: Redis
) -> None:
    """A merchant-scoped token naming "desk" opens the (empty) feed of a merchant called desk,
    not the desk; asking for a topic in the auth message changes nothing; a topic-scoped token
    naming a merchant, or a topic that does not exist, is refused with 1008."""
    url = ws_url(gateway.port)
    as_merchant = await Recorder(url, _forged(gw_settings, "desk", SCOPE)).start()
    mine = merchant_id()
    merchant_client = await Recorder(url, token_for(gw_settings, mine)).start()
    await as_merchant.wait_live()
    await merchant_client.wait_live()
    desk_before = await topic_head(gw_pool, Topic.desk())
    watcher = Recorder(url, topic_token(gw_settings, Topic.desk()), since_seq=desk_before)
    await watcher.start()
    await watcher.wait_live()
    await append_topic_events(gw_pool, gw_redis, Topic.desk(), 3)
    await append_events(gw_pool, gw_redis, mine, 1)
    await watcher.wait_seq(desk_before + 3)
    await merchant_client.wait_seq(1)
    assert as_merchant.events == []
    assert as_merchant.controls[0].get("topic") == "merchant:desk"
    assert {e["merchant_id"] for e in merchant_client.events} == {mine}
    assert {e["topic"] for e in watcher.events} == {"desk"}
    for subject in (f"merchant:{mine}", "desk:x", "request:", "lobby", ""):
        refused = await Recorder(url, _forged(gw_settings, subject, TOPIC_SCOPE)).start()
        assert await refused.wait_closed() == 1008, subject
    for client in (as_merchant, merchant_client, watcher):
        await client.stop()


async def test_an_auth_message_cannot_name_a_topic(gateway: Gateway, gw_settings: Settings) -> None:
    """Extra fields in the auth message (a topic, another merchant) are ignored: the token alone
    decides what the connection follows."""
    mine = merchant_id()
    async with connect(ws_url(gateway.port), origin=ORIGIN, compression=None) as connection:
        auth: dict[str, Any] = {
            "type": "auth",
            "token": token_for(gw_settings, mine),
            "topic": "desk",
            "merchant_id": "someone-else",
        }
        await connection.send(json.dumps(auth))
        welcome = json.loads(await connection.recv())
    assert welcome["control"] == "welcome"
    assert welcome["topic"] == f"merchant:{mine}" and welcome["merchant_id"] == mine
