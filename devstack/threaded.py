"""An ASGI app served by uvicorn in a background thread of this process: how the dev stack's
HTTP stub servers run (the Slack and PagerDuty sink, the play endpoint), in ``switchboard dev``
and in the tests alike."""

from __future__ import annotations

import threading
import time
from typing import Self

import uvicorn
from starlette.types import ASGIApp

__all__ = ["ThreadedServer"]

START_TIMEOUT = 10.0


class ThreadedServer:
    """``app`` on ``host:port`` while inside ``with``; entering returns once it listens (or
    raises RuntimeError naming ``name``), leaving stops it."""

    def __init__(self, app: ASGIApp, port: int, host: str, *, name: str) -> None:
        self.host = host
        self.port = port
        self.name = name
        self._server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="off")
        )
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
