"""``switchboard dev`` as a user runs it: starts everything, takes a webhook, stops on Ctrl-C,
and keeps its data for the next run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cli.devstack import free_port

ROOT = Path(__file__).resolve().parents[2]


def dev_env(data_dir: Path) -> dict[str, str]:
    api_port = free_port()
    return {
        **os.environ,
        "SWITCHBOARD_DATA_DIR": str(data_dir),
        "SWITCHBOARD_DATABASE_URL": f"postgresql://switchboard@127.0.0.1:{free_port()}/switchboard",
        "SWITCHBOARD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "SWITCHBOARD_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "SWITCHBOARD_TEMPORAL_UI_URL": f"http://127.0.0.1:{free_port()}",
        "SWITCHBOARD_API_PORT": str(api_port),
        "SWITCHBOARD_PUBLIC_BASE_URL": f"http://127.0.0.1:{api_port}",
        "SWITCHBOARD_WORKER_METRICS_PORT": str(free_port()),
        "SWITCHBOARD_WORKER_SDK_METRICS_PORT": str(free_port()),
    }


class DevProcess:
    """``switchboard dev`` in a subprocess, with its output readable line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "dev"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_for_line(self, fragment: str, timeout: float = 90) -> None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                break
            self.lines.append(line)
            if fragment in line:
                return
        raise AssertionError(f"no {fragment!r} in time; output:\n{''.join(self.lines)}")

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            self.wait_for_line("Stopped.", timeout=60)
            return self.process.wait(timeout=30)
        finally:
            assert self.process.stdout is not None
            self.process.stdout.close()


def cli(env: dict[str, str], *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def wait_processed(env: dict[str, str], event_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        trace = cli(env, "trace", event_id)
        if trace["status"] == "processed" and trace["merchant_event"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"{event_id} was not processed in time")


def test_dev_runs_the_stack_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    """It prints the URLs and takes a webhook; Ctrl-C stops it; the next run still has the data."""
    env = dev_env(tmp_path / "data")
    first = DevProcess(env)
    try:
        first.wait_for_line("Switchboard is ready")
        banner = "".join(first.lines)
        for what in ("Ingress", "Operator API docs", "Temporal Web UI", "Postgres", "Redis"):
            assert what in banner
        assert httpx.get(env["SWITCHBOARD_TEMPORAL_UI_URL"], timeout=10).status_code == 200
        sent = cli(env, "send", "payment.succeeded", "--amount", "1250")
        assert sent["status"] == 202
        event_id = str(sent["event_id"])
        wait_processed(env, event_id)
    finally:
        assert first.interrupt() == 0

    second = DevProcess(env)
    try:
        second.wait_for_line("Switchboard is ready")
        assert cli(env, "trace", event_id)["status"] == "processed"
        again = cli(env, "send", "refund.succeeded", "--amount", "250")
        assert again["status"] == 202
    finally:
        assert second.interrupt() == 0
