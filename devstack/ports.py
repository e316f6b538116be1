"""Free TCP ports on 127.0.0.1: one at a time, or a complete set for a whole stack.

A stack started on :class:`StackPorts` touches none of the default ports (8400, 8401, 55432,
56379, 57233, 58233, 58025, 58026, 58027, 58028, 9464, 9465), so it runs beside a developer's own
``switchboard dev``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from dataclasses import dataclass
from typing import Any, Self

__all__ = ["HOST", "StackPorts", "free_port"]

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now."""
    family = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class StackPorts:
    """One port per listening setting of a stack (see ``core/settings.py``); all different."""

    api: int
    gateway: int
    postgres: int
    redis: int
    temporal: int
    temporal_ui: int
    smtp: int
    oncall_sink: int
    play_endpoint: int
    payout_sink: int
    worker_metrics: int
    worker_sdk_metrics: int

    @classmethod
    def free(cls, host: str = HOST) -> Self:
        """A set of ports nothing listens on right now, each held until all are chosen so
        that none repeats."""
        with contextlib.ExitStack() as held:
            ports = []
            for _ in dataclasses.fields(cls):
                sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind((host, 0))
                ports.append(sock.getsockname()[1])
        return cls(*ports)

    def settings(self, host: str = HOST) -> dict[str, Any]:
        """Settings fields (``Settings(**ports.settings())``) that put a stack on these ports."""
        return {
            "database_url": f"postgresql://switchboard@{host}:{self.postgres}/switchboard",
            "redis_url": f"redis://{host}:{self.redis}/0",
            "temporal_address": f"{host}:{self.temporal}",
            "temporal_ui_url": f"http://{host}:{self.temporal_ui}",
            "api_port": self.api,
            "public_base_url": f"http://{host}:{self.api}",
            "gateway_port": self.gateway,
            "gateway_public_url": f"ws://{host}:{self.gateway}",
            "smtp_port": self.smtp,
            "oncall_sink_port": self.oncall_sink,
            "play_endpoint_port": self.play_endpoint,
            "payout_sink_port": self.payout_sink,
            "payout_base_url": f"http://{host}:{self.payout_sink}",
            "worker_metrics_port": self.worker_metrics,
            "worker_sdk_metrics_port": self.worker_sdk_metrics,
        }
