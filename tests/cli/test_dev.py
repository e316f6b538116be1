"""``switchboard dev`` as a user runs it: starts everything, takes a webhook, stops on Ctrl-C,
and keeps its data for the next run. Every port it uses is a free one, so a developer's own
``switchboard dev`` may run beside the tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from core.settings import Settings
from devstack.ports import StackPorts
from devstack.processes import REPO, SwitchboardProcess, process_env, standalone_settings


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


def cli(env: dict[str, str], *args: str) -> dict[str, object]:
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
    result: dict[str, object] = json.loads(done.stdout)
    return result


def wait_processed(env: dict[str, str], event_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        trace = cli(env, "trace", event_id)
        if trace["status"] == "processed" and trace["merchant_event"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"{event_id} was not processed in time")


def test_dev_runs_the_stack_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    """It prints the URLs and takes a webhook; Ctrl-C stops it; the next run still has the data."""
    settings = dev_settings(tmp_path / "data")
    first = DevProcess(settings, tmp_path / "dev.log")
    try:
        first.wait_ready()
        banner = first.output
        for what in ("Ingress", "Operator API docs", "Temporal Web UI", "Postgres", "Redis"):
            assert what in banner
        assert httpx.get(settings.temporal_ui_url, timeout=10).status_code == 200
        sent = cli(first.env, "send", "payment.succeeded", "--amount", "1250")
        assert sent["status"] == 202
        event_id = str(sent["event_id"])
        wait_processed(first.env, event_id)
        assert first.interrupt() == 0
    finally:
        first.kill()

    second = DevProcess(settings, tmp_path / "dev.log")
    try:
        second.wait_ready()
        assert cli(second.env, "trace", event_id)["status"] == "processed"
        again = cli(second.env, "send", "refund.succeeded", "--amount", "250")
        assert again["status"] == 202
        assert second.interrupt() == 0
    finally:
        second.kill()
