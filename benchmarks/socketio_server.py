"""The python-socketio baseline of the fan-out benchmark: ``python -m benchmarks.socketio_server
PORT REDIS_URL``. An ASGI Socket.IO server with ``AsyncRedisManager`` (the Python counterpart
of the Socket.IO Redis adapter); a client joins the room of the merchant it names, and events
reach it through ``AsyncRedisManager(write_only=True).emit(..., room=merchant)`` elsewhere."""

from __future__ import annotations

import sys
from typing import Any

import socketio  # type: ignore[import-untyped]
import uvicorn


def build(redis_url: str) -> Any:
    server = socketio.AsyncServer(
        async_mode="asgi",
        client_manager=socketio.AsyncRedisManager(redis_url),
        cors_allowed_origins="*",
        transports=["websocket"],
    )

    @server.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> None:
        await server.enter_room(sid, (auth or {})["merchant"])

    return socketio.ASGIApp(server)


if __name__ == "__main__":
    port, redis_url = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(
        build(redis_url),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        loop="uvloop",
        ws="websockets",
        lifespan="off",
    )
