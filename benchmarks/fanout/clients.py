"""The benchmark's side of the clients: ``CLIENT_PROCESSES`` processes
(:mod:`benchmarks.fanout.client_process`) that connect, then count deliveries per window."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.fanout.servers import SECRET
from benchmarks.stack import REPO
from core.dashboard_tokens import issue_dashboard_token

__all__ = ["CLIENT_PROCESSES", "Clients", "Window"]

CLIENT_PROCESSES = 3


@dataclass
class Window:
    deliveries: int
    seconds: float
    cpu: float
    latencies: list[float] = field(default_factory=list)


class ClientProcess:
    """One client process: connect, then mark/report measurement windows."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> int:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.fanout.client_process",
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        ready = await self.ask(json.dumps(self.spec), timeout=90)
        return int(ready["ready"])

    async def ask(self, line: str, timeout: float = 30) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin and self.process.stdout
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()
        answer = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not answer:
            raise RuntimeError("a client process exited")
        result: dict[str, Any] = json.loads(answer)
        return result

    async def stop(self) -> None:
        if self.process is None:
            return
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class Clients:
    """Every client of one run, spread over ``CLIENT_PROCESSES`` processes."""

    def __init__(self, kind: str, port: int, merchants: list[str], per_merchant: int) -> None:
        now = time.time()
        clients = []
        for merchant in merchants:
            token = ""
            if kind == "switchboard":
                token, _ = issue_dashboard_token(SECRET, merchant, ttl_seconds=3600, now=now)
            clients += [[merchant, token]] * per_merchant
        self.processes = [
            ClientProcess({"protocol": kind, "port": port, "clients": clients[i::CLIENT_PROCESSES]})
            for i in range(CLIENT_PROCESSES)
        ]

    async def start(self) -> int:
        return sum(await asyncio.gather(*(p.start() for p in self.processes)))

    async def mark(self) -> None:
        await asyncio.gather(*(p.ask("mark") for p in self.processes))

    async def report(self) -> tuple[Window, int]:
        """The window since the last mark, and the deliveries since the start."""
        reports = await asyncio.gather(*(p.ask("report") for p in self.processes))
        if any(r["closed"] for r in reports):
            raise RuntimeError(f"{sum(r['closed'] for r in reports)} clients were disconnected")
        window = Window(
            deliveries=sum(r["deliveries"] for r in reports),
            seconds=max(r["seconds"] for r in reports),
            cpu=sum(r["cpu"] for r in reports),
            latencies=[x for r in reports for x in r["latencies"]],
        )
        return window, sum(r["total"] for r in reports)

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.processes))
