"""A dashboard client in a process of its own (for SIGSTOP): ``python -m tests.gateway.peer URL
TOKEN``. Prints ``live`` once the gateway says so, then reads until the connection ends."""

from __future__ import annotations

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.typing import Origin


async def main(url: str, token: str) -> None:
    async with connect(url, origin=Origin("http://127.0.0.1:8400"), ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        async for raw in ws:
            if json.loads(raw).get("control") == "live":
                sys.stdout.write("live\n")
                sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
