"""The embedded service supervisor: services start, work and keep their data across restarts."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from devstack.processes import ServiceError
from devstack.redis import EmbeddedRedis
from devstack.temporal import TemporalDevServer


async def _fetch_notes(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [row["body"] for row in await conn.fetch("SELECT body FROM notes ORDER BY id")]
    finally:
        await conn.close()


async def test_postgres_keeps_rows_across_stop_and_kill(tmp_path: Path) -> None:
    """Rows committed to embedded Postgres survive a clean stop, and a SIGKILL then restart."""
    pg = EmbeddedPostgres(tmp_path, free_port())
    with pg:
        assert pg.running
        conn = await asyncpg.connect(pg.url)
        try:
            await conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)")
            await conn.execute("INSERT INTO notes (body) VALUES ('before stop')")
        finally:
            await conn.close()
    assert not pg.running

    pg.start()
    try:
        assert await _fetch_notes(pg.url) == ["before stop"]
        conn = await asyncpg.connect(pg.url)
        try:
            await conn.execute("INSERT INTO notes (body) VALUES ('before kill')")
        finally:
            await conn.close()
        pg.kill()
        assert not pg.running
        pg.start()
        assert await _fetch_notes(pg.url) == ["before stop", "before kill"]
    finally:
        pg.stop()


def test_postgres_refuses_a_taken_port(tmp_path: Path) -> None:
    """Starting Postgres on a port another socket listens on raises ServiceError naming the port."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        pg = EmbeddedPostgres(tmp_path, port)
        with pytest.raises(ServiceError, match=rf"port {port}\b.*SWITCHBOARD_DATABASE_URL"):
            pg.start()
        assert not pg.running


def test_redis_keeps_keys_across_restart(tmp_path: Path) -> None:
    """A key written to embedded Redis is read back after a stop and restart, from the AOF."""
    server = EmbeddedRedis(tmp_path, free_port())
    with server, redis.Redis.from_url(server.url) as client:
        assert client.set("greeting", "hello")
    assert not server.running
    assert any((tmp_path / "redis").rglob("*.aof"))

    with server, redis.Redis.from_url(server.url) as client:
        assert client.get("greeting") == b"hello"


def test_redis_restarts_after_kill(tmp_path: Path) -> None:
    """A SIGKILLed Redis reports not running and starts again on the same data directory."""
    server = EmbeddedRedis(tmp_path, free_port())
    server.start()
    try:
        server.kill()
        assert not server.running
        server.start()
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
    finally:
        server.stop()


def test_temporal_registers_search_attributes_and_restarts(tmp_path: Path) -> None:
    """A persistent Temporal dev server registers its Keyword search attributes and restarts on the same database."""  # noqa: E501
    server = TemporalDevServer(
        tmp_path,
        free_port(),
        ui_port=free_port(),
        search_attributes=["SwitchboardPartner"],
        dynamic_config={"system.forceSearchAttributesCacheRefreshOnRead": "true"},
    )
    with server:
        listed = server.cli("operator", "search-attribute", "list")
        assert listed.returncode == 0, listed.stderr
        assert any(
            line.split()[:2] == ["SwitchboardPartner", "Keyword"]
            for line in listed.stdout.splitlines()
        )
        assert server.ui_url is not None
        with httpx.Client() as http:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if http.get(server.ui_url).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "Temporal Web UI never answered"
                time.sleep(0.1)
    assert not server.running
    assert (tmp_path / "temporal.db").exists()

    with server:
        assert server.running
        assert "SwitchboardPartner" in server.cli("operator", "search-attribute", "list").stdout


def test_temporal_in_memory_is_headless_and_cleans_its_log() -> None:
    """An in-memory headless Temporal answers on its address and removes its temp log on stop."""
    server = TemporalDevServer(None, free_port(), ui_port=None)
    assert server.ui_url is None
    with server:
        assert server.cli("operator", "namespace", "describe", "-n", "default").returncode == 0
        log = server.log_path
        assert log is not None and log.exists()
    assert not log.exists()
