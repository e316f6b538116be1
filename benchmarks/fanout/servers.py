"""The server under test, one process per run: the Switchboard gateway, python-socketio or Node
Socket.IO (whose packages are installed on first use)."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from benchmarks.stack import HOST, REPO
from devstack.ports import free_port
from devstack.processes import (
    ChildProcess,
    ServiceError,
    SwitchboardProcess,
    standalone_settings,
)

__all__ = ["PROFILE_ENV", "SECRET", "Server", "node_available"]

SECRET = "bench-dashboard-secret-" + uuid.uuid4().hex
"""Signs the dashboard tokens of Switchboard's clients."""
NODE_DIR = REPO / "benchmarks" / "node"
PROFILE_ENV = "SWITCHBOARD_BENCH_PROFILE_DIR"
"""Set to a directory to run the gateway under cProfile (``python -m pstats`` reads the files)."""


def node_available() -> str | None:
    """Install the Node baseline's packages if needed; None if ready, else why not."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not found"
    marker = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
        try:
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR,
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (OSError, subprocess.SubprocessError) as error:
            return f"npm ci failed: {error}"
    return None


class Server:
    """One server process under test."""

    def __init__(self, kind: str, postgres_url: str, redis_url: str) -> None:
        self.kind = kind
        self.port = free_port(HOST)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        if kind == "switchboard":
            settings = standalone_settings(
                database_url=postgres_url,
                redis_url=redis_url,
                gateway_host=HOST,
                gateway_port=self.port,
                dashboard_token_secret=SECRET,
                gateway_connect_rate_per_source=5000,
                gateway_connect_rate_global=5000,
                gateway_max_connections_per_merchant=1000,
                gateway_position_check_seconds=3600,
                # At saturation the clients may briefly lag; the baselines drop no one, so
                # neither do we here (the slow-consumer bound has its own test).
                gateway_client_buffer_bytes=256 * 1024 * 1024,
                log_level="WARNING",
            )
            python_args: list[str] = []
            if profile_dir := os.environ.get(PROFILE_ENV):
                # cProfile writes its stats when the gateway exits on SIGTERM.
                out = Path(profile_dir) / f"gateway-{self.port}.prof"
                python_args = ["-m", "cProfile", "-o", str(out)]
            self.process: ChildProcess = SwitchboardProcess(
                "gateway", settings, None, cwd=REPO, python_args=python_args
            )
        elif kind == "socketio":
            argv = [sys.executable, "-m", "benchmarks.socketio_server", str(self.port), redis_url]
            self.process = ChildProcess(kind, argv, env=env, log_path=None, cwd=REPO)
        else:
            argv = ["node", str(NODE_DIR / "server.js"), str(self.port), redis_url]
            self.process = ChildProcess(kind, argv, env=env, log_path=None, cwd=REPO)
        self.process.start()

    async def wait_ready(self) -> None:
        if self.kind == "switchboard":
            try:
                await self.process.wait_ready_async(timeout=20)
            except ServiceError as error:
                raise RuntimeError(f"{self.kind} server did not start: {error}") from None
            return
        path = {"socketio": "/socket.io/?EIO=4&transport=polling", "node": "/healthz"}[self.kind]
        async with httpx.AsyncClient() as http:
            for _ in range(400):
                if (code := self.process.poll()) is not None:
                    raise RuntimeError(f"{self.kind} server exited with {code}")
                try:
                    await http.get(f"http://{HOST}:{self.port}{path}", timeout=1)
                    return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.kind} server did not start")

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process so far."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return math.nan
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.stop(5)
