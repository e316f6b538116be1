"""The fan-out hot path reads seq without parsing the event, and falls back to JSON safely."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from core import merchant_events
from core.feeds import Topic
from core.merchant_events import encode_merchant_event, seq_prefix
from gateway.hub import Feed, OtherTopic, _seq


async def test_seq_is_read_from_the_encoded_prefix_and_from_json_otherwise() -> None:
    """Events as the publisher encodes them, reordered keys, nested seqs and junk."""
    feed = Feed(Topic.merchant('m_"quoted"'))
    row = {
        "merchant_id": 'm_"quoted"',
        "seq": 41,
        "event_id": "evt_1",
        "type": "payment.succeeded",
        "data": {"seq": 7},
        "created_at": datetime.now(UTC),
    }
    encoded = encode_merchant_event(row).encode()
    assert encoded.startswith(feed.prefix)
    assert _seq(feed.prefix, encoded, "merchant_id", feed.name) == 41
    reordered = json.dumps({"data": {"seq": 7}, "seq": 42, "merchant_id": 'm_"quoted"'})
    assert _seq(feed.prefix, reordered.encode(), "merchant_id", feed.name) == 42
    named = b'"merchant_id": "m_\\"quoted\\""'
    for junk in (b"", b"not json", b"[1]", b'{"x": 1}', b'{"seq": "1", ' + named + b"}"):
        assert _seq(feed.prefix, junk, "merchant_id", feed.name) is None, junk
    assert _seq(feed.prefix, b'{"seq": true, ' + named + b"}", "merchant_id", feed.name) is None


async def test_a_payload_naming_another_merchant_is_refused() -> None:
    """Another merchant's event (even one whose id extends this one's) misses the prefix and
    fails the parsed check; so does a payload naming no merchant."""
    feed = Feed(Topic.merchant("m_a"))
    row = {
        "merchant_id": "m_ab",  # the prefix of m_a's events is not a prefix of m_ab's
        "seq": 3,
        "event_id": "evt_1",
        "type": "payment.succeeded",
        "data": {},
        "created_at": datetime.now(UTC),
    }
    for payload in (encode_merchant_event(row).encode(), b'{"seq": 3}'):
        assert not payload.startswith(feed.prefix)
        with pytest.raises(OtherTopic):
            _seq(feed.prefix, payload, "merchant_id", feed.name)


@pytest.mark.parametrize("merchant", ["m_1", "merchant_demo", 'm_"quoted"', "m-é\\x", "m:a.b"])
@pytest.mark.parametrize("seq", [1, 9, 10, 12345678901234])
async def test_the_prefix_follows_the_encoder_and_needs_no_parse(
    merchant: str, seq: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every event the publisher encodes has the feed's prefix, and its seq is read from it
    with ``json.loads`` unavailable: the fast path holds for the encoding as it is today."""
    feed = Feed(Topic.merchant(merchant))
    assert feed.prefix == seq_prefix(merchant)
    row = {
        "merchant_id": merchant,
        "seq": seq,
        "event_id": "evt_1",
        "type": "payment.succeeded",
        "data": {"seq": 7, "merchant_id": "other"},
        "created_at": datetime.now(UTC),
    }
    encoded = encode_merchant_event(row).encode()

    def no_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the fast path parsed the payload")

    monkeypatch.setattr(json, "loads", no_parse)
    assert _seq(feed.prefix, encoded, "merchant_id", merchant) == seq


async def test_an_encoder_that_moves_seq_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should the encoder stop starting with the merchant and then ``seq``, deriving the
    prefix fails loudly instead of letting the fast path misread or trust payloads."""
    original = merchant_events.encode_merchant_event

    def seq_first(row: Any) -> str:
        return json.dumps({"seq": row["seq"], **json.loads(original(row))}, separators=(",", ":"))

    def seq_last(row: Any) -> str:
        body = json.loads(original(row))
        seq = body.pop("seq")
        return json.dumps({**body, "seq": seq}, separators=(",", ":"))

    for encoder in (seq_first, seq_last):
        monkeypatch.setattr(merchant_events, "encode_merchant_event", encoder)
        with pytest.raises(ValueError, match="merchant_id, then seq"):
            seq_prefix("m_1")
