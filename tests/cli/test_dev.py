"""``switchboard dev`` as a user runs it: starts everything, takes a webhook, delivers it to the
play endpoint verified, stops on Ctrl-C, and keeps its data (and play endpoint) for the next
run. Every port it uses is a free one, so a developer's own ``switchboard dev`` may run beside
the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.typing import Origin

from core.settings import DEV_PAYOUT_API_KEY, Settings
from devstack.ports import StackPorts
from devstack.processes import (
    REPO,
    SwitchboardProcess,
    alive,
    descendants,
    process_env,
    standalone_settings,
)


def dev_settings(data_dir: Path, **values: object) -> Settings:
    """Settings of a dev stack in ``data_dir`` on a complete set of free ports."""
    return standalone_settings(data_dir=data_dir, **StackPorts.free().settings(), **values)


class DevProcess:
    """``switchboard dev`` in a subprocess, its output in a log file read line by line."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.env = process_env(settings)
        self.log = log
        self._seen = len(self._lines())
        self.process = SwitchboardProcess("dev", settings, log, cwd=REPO).start()

    def _lines(self) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    @property
    def output(self) -> str:
        """What this run printed so far."""
        return "\n".join(self._lines()[self._seen :])

    def wait_for_line(self, fragment: str, timeout: float = 120) -> str:
        """The first line of this run's output containing ``fragment``, waited for."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self._lines()[self._seen :]:
                if fragment in line:
                    return line
            if self.process.poll() is not None and fragment not in self.output:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {fragment!r} in time; output:\n{self.output}")

    def wait_ready(self) -> None:
        self.wait_for_line("Switchboard is ready")

    def interrupt(self, sig: int = signal.SIGINT) -> int:
        """Send ``sig`` and wait for dev to say it stopped and exit; returns its exit code."""
        self.process.send_signal(sig)
        self.wait_for_line("Stopped.", timeout=90)
        assert self.process.process is not None
        return self.process.process.wait(timeout=30)

    def kill(self) -> None:
        self.process.kill()


def cli(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args, "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def wait_processed(env: dict[str, str], event_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        trace = cli(env, "trace", event_id)
        if trace["status"] == "processed" and trace["merchant_event"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"{event_id} was not processed in time")


def wait_played(env: dict[str, str], event_id: str, timeout: float = 60) -> dict[str, Any]:
    """The play endpoint's record of the delivery of ``event_id``, waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in cli(env, "play", "list"):
            if item["body"]["data"].get("event_id") == event_id:
                return dict(item)
        time.sleep(0.2)
    raise AssertionError(f"{event_id} did not reach the play endpoint in time")


def test_dev_runs_the_stack_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    """It prints the URLs and takes a webhook; Ctrl-C stops it; the next run still has the data."""
    settings = dev_settings(tmp_path / "data")
    first = DevProcess(settings, tmp_path / "dev.log")
    try:
        first.wait_ready()
        banner = first.output
        for what in ("Ingress", "Operator API docs", "Temporal Web UI", "Postgres", "Redis"):
            assert what in banner
        assert f"Play endpoint      http://127.0.0.1:{settings.play_endpoint_port}" in banner
        assert httpx.get(settings.temporal_ui_url, timeout=10).status_code == 200
        payouts = httpx.get(
            f"http://127.0.0.1:{settings.payout_sink_port}/v1/transfers",
            headers={"Authorization": f"Bearer {DEV_PAYOUT_API_KEY}"},
            timeout=10,
        )
        assert payouts.json() == {"data": []}
        sent = cli(first.env, "send", "payment.succeeded", "--amount", "1250")
        assert sent["status"] == 202
        event_id = str(sent["event_id"])
        wait_processed(first.env, event_id)
        played = wait_played(first.env, event_id)
        assert played["verified"] is True, played["detail"]
        assert played["type"] == "payment.succeeded"
        play_endpoint = json.loads((settings.data_dir / "dev.json").read_text())["play_endpoint_id"]
        assert first.interrupt() == 0
    finally:
        first.kill()

    second = DevProcess(settings, tmp_path / "dev.log")
    try:
        second.wait_ready()
        assert cli(second.env, "trace", event_id)["status"] == "processed"
        endpoints = cli(second.env, "endpoints", "list", "--merchant", "merchant_demo")
        assert [ep["id"] for ep in endpoints] == [play_endpoint]
        refund = ["send", "refund.succeeded", "--payment-id", str(sent["payment_id"])]
        again = cli(second.env, *refund, "--amount", "250")
        assert again["status"] == 202 and again["payment_id"] == sent["payment_id"]
        wait_processed(second.env, str(again["event_id"]))
        paid = cli(second.env, "send", "payment.succeeded", "--amount", "990")
        assert wait_played(second.env, str(paid["event_id"]))["verified"] is True
        assert second.interrupt() == 0
    finally:
        second.kill()


# -- the supervisor ------------------------------------------------------------------------


def _children(dev: DevProcess) -> dict[str, int]:
    """Direct children of dev by role: api, worker, gateway, postgres, redis, temporal."""
    assert dev.process.pid is not None
    found: dict[str, int] = {}
    for pid in descendants(dev.process.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError):
            continue
        if parent != dev.process.pid:
            continue
        if b"cli.main" in argv:
            found[argv[argv.index(b"cli.main") + 1].decode()] = pid
        elif argv[0].endswith(b"/postgres"):
            found["postgres"] = pid
        elif b"valkey-server" in argv[0]:
            found["redis"] = pid
        elif argv[0].endswith(b"/temporal"):
            found["temporal"] = pid
    return found


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    """One ``switchboard dev`` on shifted ports for the supervisor tests (the last stops it)."""
    root = tmp_path_factory.mktemp("supervised")
    running = DevProcess(dev_settings(root / "data"), root / "dev.log")
    try:
        running.wait_ready()
        yield running
    finally:
        running.kill()


def test_dashboard_origin_follows_a_shifted_api_port(dev: DevProcess) -> None:
    """The gateway accepts the handshake of a dashboard served by the api's shifted port and
    refuses one from the default port, which now belongs to nobody in this stack."""
    url = f"ws://127.0.0.1:{dev.settings.gateway_port}/ws"
    with ws_connect(url, origin=Origin(f"http://127.0.0.1:{dev.settings.api_port}")) as ws:
        assert ws.response is not None and ws.response.status_code == 101
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(url, origin=Origin("http://127.0.0.1:8400"))
    assert refused.value.response.status_code == 403


def test_a_killed_worker_is_restarted_while_the_api_keeps_answering(dev: DevProcess) -> None:
    """SIGKILL the worker: dev says it restarts it, the api answers all along, and a webhook
    sent meanwhile is processed."""
    before = _children(dev)
    os.kill(before["worker"], signal.SIGKILL)
    line = dev.wait_for_line("worker exited with -9", timeout=30)
    assert "restarting in 1s (restart 1)" in line
    health = f"{dev.settings.public_base_url}/healthz"
    assert httpx.get(health, timeout=5).status_code == 200
    sent = cli(dev.env, "send", "payment.succeeded", "--amount", "990")
    assert sent["status"] == 202
    dev.wait_for_line("worker restarted", timeout=30)
    wait_processed(dev.env, str(sent["event_id"]))
    after = _children(dev)
    assert after["api"] == before["api"]
    assert after["worker"] != before["worker"]
    assert httpx.get(health, timeout=5).status_code == 200


def test_a_killed_backing_service_is_named_and_started_again(dev: DevProcess) -> None:
    """SIGKILL Postgres: dev names it, starts it again on its data, and webhooks flow again."""
    os.kill(_children(dev)["postgres"], signal.SIGKILL)
    assert "Postgres exited with -9" in dev.wait_for_line("exited with -9; starting it again")
    dev.wait_for_line("Postgres is back", timeout=90)
    deadline = time.monotonic() + 60
    while True:  # the api's pool reconnects on its next use; a 503 until then is fair
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", "send", "payment.succeeded", "--json"],
            cwd=REPO,
            env=dev.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode == 0 and json.loads(done.stdout)["status"] == 202:
            break
        assert time.monotonic() < deadline, done.stdout + done.stderr
        time.sleep(0.5)
    wait_processed(dev.env, str(json.loads(done.stdout)["event_id"]))


def test_sigterm_stops_every_child_restarts_included(dev: DevProcess) -> None:
    """SIGTERM dev: it exits 0 and no process it started (or restarted) is left, by pid."""
    assert dev.process.pid is not None
    started = descendants(dev.process.pid)
    assert {"api", "worker", "gateway", "postgres", "redis", "temporal"} <= _children(dev).keys()
    assert dev.interrupt(signal.SIGTERM) == 0
    assert [pid for pid in started if alive(pid)] == []
