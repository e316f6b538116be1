"""Client messages the gateway cannot use are refused as such, never raised."""

from __future__ import annotations

import pytest

from gateway.protocol import parse_client_message


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 30_000,
        "{" * 30_000,
        b"\xff\xfe",
        "null",
        '{"type": "auth"}',
        '{"type": "auth", "token": "t", "since_seq": -1}',
        '{"type": "auth", "token": "t", "since_seq": true}',
        '{"type": "subscribe", "channel": "switchboard:merchant:other"}',
    ],
)
def test_unusable_messages_parse_to_none(raw: str | bytes) -> None:
    assert parse_client_message(raw) is None


def test_auth_and_ping_parse() -> None:
    auth = parse_client_message('{"type": "auth", "token": "t", "since_seq": 7}')
    assert auth is not None
    assert (auth.type, auth.token, auth.since_seq) == ("auth", "t", 7)
    ping = parse_client_message('{"type": "ping"}')
    assert ping is not None and ping.type == "ping"
