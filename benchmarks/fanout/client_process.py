"""The WebSocket clients of the fan-out benchmark: one of several client processes.

``python -m benchmarks.fanout.client_process`` reads one JSON line on stdin
(``{"protocol": "switchboard" | "socketio", "port", "clients": [[merchant, token], ...]}``),
connects every client, prints ``{"ready": n}``, then counts what arrives. ``mark`` on stdin
starts a new window; ``report`` prints the window's deliveries, latency samples (ms), the
process's CPU seconds and the deliveries since the start; EOF ends it.

Clients speak just enough WebSocket (RFC 6455) to count frames: the benchmark is about the
servers, and a full client library (``websockets`` parses every frame in Python objects) would
cost more CPU per message than the servers do, on a machine with two cores. Every message whose
payload starts like an event is a delivery; every ``SAMPLE_EVERY``-th one is also parsed for the
publish time ``"t":`` the publisher put in it (same machine, same clock).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import Callable

import uvloop

SAMPLE_EVERY = 4
EVENT_PREFIXES = (b'{"merchant_id"', b'42["event"')
"""Switchboard's event messages, and Socket.IO EVENT packets named ``event``."""


class Counters:
    def __init__(self) -> None:
        self.deliveries = 0
        self.total = 0
        self.latencies: list[float] = []
        self.connected = 0
        self.closed = 0


def _frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (payloads under 64 KiB)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        header = bytes([0x80 | opcode, 0x80 | len(payload)])
    else:
        header = bytes([0x80 | opcode, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    return header + mask + masked


def _publish_time(message: bytes) -> float | None:
    start = message.find(b'"t":')
    if start < 0:
        return None
    end = start + 4
    while end < len(message) and message[end] in b"0123456789.":
        end += 1
    try:
        return float(message[start + 4 : end])
    except ValueError:
        return None


class Client(asyncio.Protocol):
    """One WebSocket connection: handshake, then frames counted as they arrive."""

    def __init__(self, counters: Counters, path: str, first: bytes, socketio: bool) -> None:
        self.counters = counters
        self.path = path
        self.first = first
        self.socketio = socketio
        self.buffer = bytearray()
        self.upgraded = False
        self.live = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(  # type: ignore[attr-defined]
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:8400\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self._fail(bytes(buffer[: buffer.find(b"\r\n")]).decode(errors="replace"))
                return
            del buffer[: end + 4]
            self.upgraded = True
            if not self.socketio:
                self._send(self.first)
        pos, size = 0, len(buffer)
        counters = self.counters
        while size - pos >= 2:
            opcode = buffer[pos] & 0x0F
            length = buffer[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            if opcode == 0x1 or opcode == 0x2:
                if buffer.startswith(EVENT_PREFIXES, start):
                    counters.deliveries += 1
                    counters.total += 1
                    if counters.total % SAMPLE_EVERY == 0:
                        sent = _publish_time(bytes(buffer[start:end]))
                        if sent is not None:
                            counters.latencies.append((time.time() - sent) * 1000)
                else:
                    self._control(bytes(buffer[start:end]))
            elif opcode == 0x9:
                self._send(bytes(buffer[start:end]), 0xA)
            elif opcode == 0x8:
                self._fail("closed by the server")
            pos = end
        del buffer[:pos]

    def _control(self, message: bytes) -> None:
        if self.socketio:
            if message == b"2":  # Engine.IO ping
                self._send(b"3")
            elif message.startswith(b"0"):  # Engine.IO open: connect to the namespace
                self._send(self.first)
            elif message.startswith(b"40") and not self.live.done():
                self.live.set_result(None)
        elif b'"live"' in message and not self.live.done():
            self.live.set_result(None)

    def _send(self, payload: bytes, opcode: int = 0x1) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(payload, opcode))

    def _fail(self, why: str) -> None:
        if not self.live.done():
            self.live.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.counters.closed += 1
        if not self.live.done():
            self.live.set_exception(RuntimeError(f"connection lost: {exc}"))


def _factory(counters: Counters, path: str, first: bytes, socketio: bool) -> Callable[[], Client]:
    return lambda: Client(counters, path, first, socketio)


async def _connect(spec: dict[str, object], counters: Counters) -> list[Client]:
    loop = asyncio.get_running_loop()
    socketio = spec["protocol"] != "switchboard"
    port = int(str(spec["port"]))
    clients = []
    for merchant, token in spec["clients"]:  # type: ignore[attr-defined]
        if socketio:
            path = "/socket.io/?EIO=4&transport=websocket"
            first = b"40" + json.dumps({"merchant": merchant}).encode()
        else:
            path = "/ws"
            first = json.dumps({"type": "auth", "token": token}).encode()
        _, client = await loop.create_connection(
            _factory(counters, path, first, socketio), "127.0.0.1", port
        )
        clients.append(client)
        if len(clients) % 50 == 0:
            await asyncio.sleep(0.02)  # stay under the servers' handshake rate limits
    async with asyncio.timeout(60):
        await asyncio.gather(*(client.live for client in clients))
    counters.connected = len(clients)
    return clients


async def main() -> None:
    spec = json.loads(sys.stdin.readline())
    counters = Counters()
    clients = await _connect(spec, counters)
    print(json.dumps({"ready": counters.connected}), flush=True)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    started, cpu = time.monotonic(), time.process_time()
    while line := (await reader.readline()).strip():
        if line == b"mark":
            counters.deliveries, counters.latencies = 0, []
            started, cpu = time.monotonic(), time.process_time()
            print("{}", flush=True)
        elif line == b"report":
            report = {
                "deliveries": counters.deliveries,
                "total": counters.total,
                "seconds": time.monotonic() - started,
                "cpu": time.process_time() - cpu,
                "latencies": [round(x, 3) for x in counters.latencies],
                "closed": counters.closed,
            }
            print(json.dumps(report), flush=True)
    for client in clients:
        if client.transport is not None:
            client.transport.close()


if __name__ == "__main__":
    uvloop.run(main())
