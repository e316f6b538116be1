"""The fan-out hot path reads seq without parsing the event, and falls back to JSON safely."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from core.merchant_events import encode_merchant_event
from gateway.hub import MerchantFeed, OtherMerchant, _seq


async def test_seq_is_read_from_the_encoded_prefix_and_from_json_otherwise() -> None:
    """Events as the publisher encodes them, reordered keys, nested seqs and junk."""
    feed = MerchantFeed('m_"quoted"')
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
    assert _seq(feed.prefix, encoded, feed.merchant_id) == 41
    reordered = json.dumps({"data": {"seq": 7}, "seq": 42, "merchant_id": 'm_"quoted"'})
    assert _seq(feed.prefix, reordered.encode(), feed.merchant_id) == 42
    named = b'"merchant_id": "m_\\"quoted\\""'
    for junk in (b"", b"not json", b"[1]", b'{"x": 1}', b'{"seq": "1", ' + named + b"}"):
        assert _seq(feed.prefix, junk, feed.merchant_id) is None, junk
    assert _seq(feed.prefix, b'{"seq": true, ' + named + b"}", feed.merchant_id) is None


async def test_a_payload_naming_another_merchant_is_refused() -> None:
    """Another merchant's event (even one whose id extends this one's) misses the prefix and
    fails the parsed check; so does a payload naming no merchant."""
    feed = MerchantFeed("m_a")
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
        with pytest.raises(OtherMerchant):
            _seq(feed.prefix, payload, feed.merchant_id)
