"""The fan-out hot path reads seq without parsing the event, and falls back to JSON safely."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from core.merchant_events import encode_merchant_event
from gateway.hub import MerchantFeed, _seq


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
    assert _seq(feed.prefix, encoded) == 41
    reordered = json.dumps({"data": {"seq": 7}, "seq": 42, "merchant_id": 'm_"quoted"'})
    assert _seq(feed.prefix, reordered.encode()) == 42
    for junk in (b"", b"not json", b'{"seq": "1"}', b'{"seq": true}', b"[1]", b'{"x": 1}'):
        assert _seq(feed.prefix, junk) is None
