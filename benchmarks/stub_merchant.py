"""The merchant side of the delivery benchmark: a raw asyncio HTTP/1.1 server, one port per mode.

* ``ok`` answers every POST with 200.
* ``flaky`` answers 500 or 503 (no ``Retry-After``) with probability ``--failure-rate``, drawn
  from a seeded generator, and 200 otherwise.
* ``hang`` reads each request and never answers, holding the connection until it is dropped:
  the most expensive kind of dead endpoint, since every attempt waits for its whole timeout.

It runs as its own process (``python -m benchmarks.stub_merchant --ok-port N --flaky-port N
--hang-port N``) so its CPU is accounted apart from Switchboard's. Any port also answers two
control paths: ``POST /_control/drop`` closes every held ``hang`` connection (between runs, so
no attempt outlives its run), and ``GET /_control/stats`` returns the answers given so far, by
mode and status, as JSON. Keep-alive, ``content-length`` bodies only (what the delivery pool
sends); anything else closes the connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
from collections import Counter
from collections.abc import Awaitable, Callable

import uvloop

__all__ = ["CONTROL_DROP", "CONTROL_STATS", "StubMerchant"]

CONTROL_DROP = "/_control/drop"
CONTROL_STATS = "/_control/stats"
MAX_HEAD_BYTES = 64 * 1024
FAILURE_STATUSES = (500, 503)


class StubMerchant:
    """Answers deliveries by mode (see the module docstring) and counts the answers."""

    def __init__(self, failure_rate: float, seed: int) -> None:
        self.failure_rate = failure_rate
        self._random = random.Random(seed)
        self.answers: Counter[str] = Counter()
        self._held: set[asyncio.StreamWriter] = set()

    def handler(
        self, mode: str
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await self._serve(mode, reader, writer)
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass
            finally:
                self._held.discard(writer)
                writer.close()

        return serve

    async def _serve(
        self, mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = _content_length(head)
            if length:
                await reader.readexactly(length)
            path = head.split(b" ", 2)[1].decode("latin-1")
            if path == CONTROL_DROP:
                dropped = len(self._held)
                for held in list(self._held):
                    held.close()
                self._respond(writer, 200, json.dumps({"dropped": dropped}).encode())
            elif path == CONTROL_STATS:
                self._respond(writer, 200, json.dumps(dict(self.answers)).encode())
            elif mode == "hang":
                self.answers["hang:held"] += 1
                self._held.add(writer)
                # Nothing more is read or written; the connection lives until dropped or closed.
                await reader.read()
                return
            else:
                status = self._status(mode)
                self.answers[f"{mode}:{status}"] += 1
                self._respond(writer, status, b"{}")
            await writer.drain()

    def _status(self, mode: str) -> int:
        if mode == "flaky" and self._random.random() < self.failure_rate:
            return self._random.choice(FAILURE_STATUSES)
        return 200

    @staticmethod
    def _respond(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        reason = {200: "OK", 500: "Internal Server Error", 503: "Service Unavailable"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode("ascii")
            + body
        )


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    if head.lower().find(b"transfer-encoding") >= 0:
        raise ValueError("chunked bodies are not supported")
    return 0


async def _serve_forever(args: argparse.Namespace) -> None:
    stub = StubMerchant(args.failure_rate, args.seed)
    servers = [
        await asyncio.start_server(stub.handler(mode), "127.0.0.1", port, limit=MAX_HEAD_BYTES)
        for mode, port in (
            ("ok", args.ok_port),
            ("flaky", args.flaky_port),
            ("hang", args.hang_port),
        )
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stub_merchant", description=__doc__)
    parser.add_argument("--ok-port", type=int, required=True)
    parser.add_argument("--flaky-port", type=int, required=True)
    parser.add_argument("--hang-port", type=int, required=True)
    parser.add_argument("--failure-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=20261122)
    uvloop.run(_serve_forever(parser.parse_args()))


if __name__ == "__main__":
    main()
