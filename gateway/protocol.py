"""What travels over a dashboard WebSocket: the client's messages, ours, and our close codes.

Client → gateway (JSON text frames, at most ``gateway_max_message_bytes``):

* first, within ``gateway_auth_timeout_seconds``:
  ``{"type": "auth", "token": "<dashboard token>", "since_seq": 41}``; ``since_seq`` is the last
  seq the client has (omit it, or send null, to start from now);
* afterwards only ``{"type": "ping"}`` (answered with a ``pong`` control message), at most
  ``gateway_client_messages_per_minute``.

The token decides the topic (:class:`core.feeds.Topic`): a merchant's feed, the exchange desk
or one exchange request. Gateway → client: every message carrying ``seq`` is an event of that
topic, a merchant's as ``{merchant_id, seq, event_id, type, data, occurred_at}``
(:func:`core.merchant_events.encode_merchant_event`), any other topic's as ``{topic, seq,
event_id, type, data, occurred_at}`` (:func:`core.feeds.encode_feed_event`); every other message
carries ``control``:

* ``{"control": "welcome", "topic", "since_seq", "head_seq"}`` after a valid auth, with
  ``merchant_id`` too on a merchant's feed (``topic`` is ``merchant:<id>``, ``desk`` or
  ``request:<id>``);
* ``{"control": "live", "through_seq"}`` once the replay of missed events is done (everything
  up to ``through_seq`` was sent, in order; live events follow);
* ``{"control": "pong"}``.

Events arrive in strictly increasing ``seq`` order per connection. A client that resumes with a
``since_seq`` this instance has not seen yet may get events it already has again: drop any seq
not above the last one kept.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Any

__all__ = ["ClientMessage", "CloseCode", "control_message", "parse_client_message"]


class CloseCode(IntEnum):
    """Why the gateway closed a connection, and what a client should do next.

    The 3000-range codes are Centrifugo's (its ``DisconnectExpired``, ``DisconnectSlow`` and
    ``DisconnectInsufficientState``), so clients written for it read them the same way.
    """

    POLICY_VIOLATION = 1008
    """Bad or missing auth, auth not sent in time, an unexpected message, or a message flood.
    Get a new token before reconnecting; do not retry in a tight loop."""
    MESSAGE_TOO_BIG = 1009
    """A client message above the size cap (set by ``websockets`` itself)."""
    SERVICE_RESTART = 1012
    """The instance is shutting down: reconnect with backoff and jitter, resume from last seq."""
    TRY_AGAIN_LATER = 1013
    """Too many connections for this topic on this instance: back off, then reconnect."""
    TOKEN_EXPIRED = 3005
    """The token's lifetime is over: get a new one and resume from the last seq."""
    SLOW_CONSUMER = 3008
    """The client fell more than ``gateway_client_buffer_bytes`` behind: reconnect and resume."""
    INSUFFICIENT_STATE = 3010
    """The gateway could not keep this connection gapless: a gap it could not fill from
    Postgres in time (or too many events held back behind it), or a resume further behind than
    ``gateway_max_replay_events``. Back off and resume from the last seq, or reload the state
    with the sync endpoint and resume from its ``head_seq`` (what the dashboard does)."""


class ClientMessage:
    """A parsed client message: its ``type`` and the fields that type uses."""

    __slots__ = ("since_seq", "token", "type")

    def __init__(self, type_: str, token: str | None = None, since_seq: int | None = None) -> None:
        self.type = type_
        self.token = token
        self.since_seq = since_seq


def parse_client_message(raw: str | bytes) -> ClientMessage | None:
    """The message, or None if it is not one of ours (the caller closes with 1008)."""
    try:
        body: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: deeply nested arrays ("[[[[…") are not a message either.
        return None
    if not isinstance(body, dict):
        return None
    kind = body.get("type")
    if kind == "ping":
        return ClientMessage("ping")
    if kind != "auth":
        return None
    token, since_seq = body.get("token"), body.get("since_seq")
    if not isinstance(token, str):
        return None
    if since_seq is not None and (
        isinstance(since_seq, bool) or not isinstance(since_seq, int) or since_seq < 0
    ):
        return None
    return ClientMessage("auth", token, since_seq)


def control_message(kind: str, **fields: Any) -> str:
    """A control message (never carries ``seq`` at the top level)."""
    return json.dumps({"control": kind, **fields}, separators=(",", ":"))
