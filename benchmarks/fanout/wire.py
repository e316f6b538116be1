"""Each system's Redis channel and message for a merchant's event: Switchboard's and
python-socketio's JSON, and @socket.io/redis-adapter's MessagePack, built from templates."""

from __future__ import annotations

import json
import struct
from typing import Any

from core.contracts import merchant_channel

__all__ = ["Formats"]


def _mp_str(text: str) -> bytes:
    raw = text.encode()
    if len(raw) < 32:
        return bytes([0xA0 | len(raw)]) + raw
    return b"\xd9" + bytes([len(raw)]) + raw


def _mp(value: Any) -> bytes:
    """MessagePack for the few shapes the adapter's messages use (ints as uint32)."""
    if value is None:
        return b"\xc0"
    if isinstance(value, bool):
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        return b"\xce" + struct.pack(">I", value)
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, str):
        return _mp_str(value)
    if isinstance(value, list):
        return bytes([0x90 | len(value)]) + b"".join(_mp(v) for v in value)
    if isinstance(value, dict):
        return bytes([0x80 | len(value)]) + b"".join(_mp(k) + _mp(v) for k, v in value.items())
    raise TypeError(value)


class Formats:
    """Each system's Redis channel and message for one merchant's event, built from templates
    (the publisher must cost far less than the servers it feeds)."""

    SEQ, T = 0xDEADBEEF, 1234.5678

    def __init__(self, kind: str, merchant: str) -> None:
        self.kind = kind
        event = {
            "merchant_id": merchant,
            "seq": self.SEQ,
            "event_id": "evt_" + "9" * 10,
            "type": "payment.succeeded",
            "data": {"amount": 1250, "currency": "EUR", "t": self.T},
            "occurred_at": "2026-11-22T00:00:00+00:00",
        }
        if kind == "node":
            self.channel = f"socket.io#/#{merchant}#".encode()
            message = [
                "bench-publisher",
                {"type": 2, "data": ["event", event], "nsp": "/"},
                {"rooms": [merchant], "except": [], "flags": {}},
            ]
            encoded = _mp(message)
            seq_at = encoded.index(_mp(self.SEQ))
            id_at = encoded.index(_mp("evt_" + "9" * 10))
            t_at = encoded.index(_mp(self.T))
            self.parts = (encoded[:seq_at], encoded[seq_at + 5 : id_at], encoded[id_at + 15 : t_at])
            self.tail = encoded[t_at + 9 :]
            return
        text = json.dumps(event, separators=(",", ":"))
        if kind == "socketio":
            self.channel = b"socketio"
            text = json.dumps(
                {
                    "method": "emit",
                    "event": "event",
                    "data": [event],
                    "binary": False,
                    "namespace": "/",
                    "room": merchant,
                    "skip_sid": None,
                    "callback": None,
                    "host_id": "bench-publisher",
                },
                separators=(",", ":"),
            )
        else:
            self.channel = merchant_channel(merchant).encode()
        text = text.replace(str(self.SEQ), "%d").replace("9" * 10, "%010d")
        self.template = text.replace(str(self.T), "%.6f").encode()

    def message(self, seq: int, now: float) -> bytes:
        if self.kind == "node":
            head, mid, before_t = self.parts
            return b"".join(
                (
                    head,
                    struct.pack(">BI", 0xCE, seq),
                    mid,
                    _mp_str(f"evt_{seq:010d}"),
                    before_t,
                    struct.pack(">Bd", 0xCB, now),
                    self.tail,
                )
            )
        return self.template % (seq, seq, now)
