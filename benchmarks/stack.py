"""The system under test, started from scratch for one benchmark run, and its CPU accounting.

:class:`BenchStack` starts embedded Postgres, Redis (Valkey) and a Temporal dev server on free
127.0.0.1 ports in a temp dir (Temporal keeps a SQLite file there, as ``switchboard dev`` does,
unless ``temporal_in_memory``), applies the migrations, registers a benchmark partner, then runs
the api (``python -m cli.main api``), the worker (``python worker.py``) and the bare baseline
ingress (``python -m benchmarks.bare_ingress``) as separate processes with ``SWITCHBOARD_*``
variables pointing at those services, plus the stub merchant that deliveries go to
(``python -m benchmarks.stub_merchant``) and, with ``gateway=True``, the WebSocket gateway
(``python -m cli.main gateway``). The worker may reach loopback merchants and retries
deliveries on a short schedule (:data:`DELIVERY_SETTINGS`); :meth:`BenchStack.restart_worker`
restarts it with other settings. Every child runs in its own session with cwd in the temp
dir (so no stray ``.env`` applies) and is stopped, then killed if need be, on exit
(:mod:`devstack.processes` spawns, probes and stops them).

:class:`CpuMeter` reads the CPU time of each of those processes (and their children) so a phase
can say which process used how much of the machine's cores.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import asyncpg
import psutil

from core.contracts import SEARCH_ATTRIBUTES
from core.db import migrate
from core.settings import Settings
from core.signing import generate_secret
from core.tenancy import create_partner
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from devstack.processes import (
    ChildProcess,
    ServiceError,
    SwitchboardProcess,
    process_env,
    standalone_settings,
    stop_all,
)
from devstack.redis import EmbeddedRedis
from devstack.temporal import TemporalDevServer

__all__ = ["DELIVERY_SETTINGS", "HOST", "OTHERS", "REPO", "BenchStack", "CpuMeter", "CpuUse"]

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
PARTNER_ID = "bench"
BARE_SECRET_ENV = "BENCH_BARE_SECRET"
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 1.0
"""Seconds a process gets to exit on SIGTERM before SIGKILL (its results are already in)."""
WORKER_RESTART_TIMEOUT = 15.0
"""Seconds a restarted worker gets to shut down gracefully (it allows itself 10)."""
DELIVERY_SETTINGS = {
    "DELIVERY_ALLOW_NETWORKS": f"{HOST}/32",
    # Attempts 1 s apart instead of 5 s, 5 min, 30 min…, so failed deliveries finish in a run.
    "DELIVERY_RETRY_SCHEDULE": "[0, 1, 1, 1, 1, 1, 1, 1]",
}
"""Worker (and api) settings for outbound deliveries to the stub merchant on 127.0.0.1."""


class BenchStack:
    """Services plus api, worker and bare-ingress processes; use as a context manager."""

    def __init__(self, *, temporal_in_memory: bool = False, gateway: bool = False) -> None:
        self.root = Path(tempfile.gettempdir()) / f"switchboard-bench-{uuid.uuid4().hex[:12]}"
        self.postgres = EmbeddedPostgres(self.root / "postgres", free_port(HOST))
        self.redis = EmbeddedRedis(self.root / "redis", free_port(HOST))
        self.temporal = TemporalDevServer(
            None if temporal_in_memory else self.root / "temporal",
            free_port(HOST),
            ui_port=None,
            search_attributes=[key.name for key in SEARCH_ATTRIBUTES],
        )
        self.api_port = free_port(HOST)
        self.gateway_port = free_port(HOST) if gateway else None
        self.bare_port = free_port(HOST)
        self.merchant_ports = {mode: free_port(HOST) for mode in ("ok", "flaky", "hang")}
        self.refusing_port = free_port(HOST)
        """Nothing listens here: a dead endpoint that refuses connections."""
        self.partner_id = PARTNER_ID
        self.partner_secret = generate_secret()
        self.task_queue = "switchboard-webhooks"
        self.processes: dict[str, ChildProcess] = {}
        self._exit = ExitStack()
        self._settings = standalone_settings()

    def start(self) -> None:
        """Start everything; on failure, stop whatever had started and re-raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the processes, kill the services and delete the temp dir."""
        self._exit.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def database_url(self) -> str:
        return self.postgres.url

    @property
    def gateway_url(self) -> str:
        """The gateway's WebSocket URL (only with ``gateway=True``)."""
        return f"ws://{HOST}:{self.gateway_port}/ws"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    def merchant_url(self, mode: str) -> str:
        """Base URL of the stub merchant's ``mode`` port (``ok``, ``flaky``, ``hang``)."""
        return f"http://{HOST}:{self.merchant_ports[mode]}"

    def restart_worker(self, settings: dict[str, str]) -> None:
        """Stop the worker (if it runs) and start it again with ``SWITCHBOARD_{key}`` = value
        on top.

        The old worker shuts down gracefully, so the Temporal server sees its polls end rather
        than a vanished poller; the call returns once the new one says it is ready. Its pid
        changes: build a new :class:`CpuMeter` afterwards.
        """
        self.stop_worker()
        extra = {f"SWITCHBOARD_{key}": value for key, value in settings.items()}
        worker = self._spawn_switchboard("worker", extra)
        self._wait_ready(worker)

    def stop_worker(self) -> None:
        """Stop the worker gracefully, if it runs (its relays stop with it)."""
        worker = self.processes.pop("worker", None)
        if worker is not None:
            worker.stop(WORKER_RESTART_TIMEOUT)

    def pids(self) -> dict[str, int]:
        """Process ids worth accounting CPU for, by role (this process is ``bench``)."""
        found = {name: proc.pid for name, proc in self.processes.items() if proc.pid is not None}
        for name, service in (
            ("postgres", self.postgres),
            ("redis", self.redis),
            ("temporal", self.temporal),
        ):
            if service.pid is not None:
                found[name] = service.pid
        found["bench"] = os.getpid()
        return found

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The end of a process's log, for error messages."""
        path = self.root / "logs" / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise if the api, worker or bare ingress has exited."""
        for name, proc in self.processes.items():
            if (code := proc.poll()) is not None:
                raise RuntimeError(f"{name} exited with {code}:\n{self.log_tail(name)}")

    # -- start-up ------------------------------------------------------------------------------

    def _start(self) -> None:
        self.root.mkdir(mode=0o700)
        self._exit.callback(shutil.rmtree, self.root, ignore_errors=True)
        self._exit.callback(self._remove_temporal_log)
        # Exit runs in reverse: the processes stop first, then the services go.
        self._exit.callback(self._kill_services)
        self._exit.callback(lambda: stop_all(self.processes.values(), STOP_TIMEOUT))
        self._settings = self._switchboard_settings()
        env = process_env(self._settings, {"PYTHONPATH": str(REPO)})
        # The bare app needs no service: let it import while the services start.
        self._spawn(
            "bare",
            [sys.executable, "-m", "benchmarks.bare_ingress", "--port", str(self.bare_port)],
            {**env, BARE_SECRET_ENV: self.partner_secret},
        )
        ports = [f"--{mode}-port={port}" for mode, port in self.merchant_ports.items()]
        self._spawn("merchant", [sys.executable, "-m", "benchmarks.stub_merchant", *ports], env)
        self._start_services()
        started = [self._spawn_switchboard("api"), self._spawn_switchboard("worker")]
        if self.gateway_port is not None:
            started.append(self._spawn_switchboard("gateway"))
        for name, port in [("bare", self.bare_port)] + [
            ("merchant", port) for port in self.merchant_ports.values()
        ]:
            self._wait_for_port(name, port)
        for process in started:
            self._wait_ready(process)

    def _start_services(self) -> None:
        """Start Postgres (then migrate it), Redis and Temporal side by side."""
        steps = {
            self.postgres: self._start_database,
            self.redis: self.redis.start,
            self.temporal: self.temporal.start,
        }
        with ThreadPoolExecutor(len(steps)) as threads:
            started = [threads.submit(step) for step in steps.values()]
        for future in started:
            future.result()

    def _kill_services(self) -> None:
        # Throwaway data: killing is as good as a clean stop, and much faster.
        for service in (self.temporal, self.redis, self.postgres):
            service.kill()

    def _start_database(self) -> None:
        self.postgres.start()
        migrate(self.database_url)
        asyncio.run(_register_partner(self.database_url, self.partner_id, self.partner_secret))

    def _remove_temporal_log(self) -> None:
        """An in-memory Temporal server logs to a temp file of its own, outside ``root``."""
        log = self.temporal.log_path
        if self.temporal.data_dir is None and log is not None:
            log.unlink(missing_ok=True)

    def _switchboard_settings(self) -> Settings:
        return standalone_settings(
            environment="development",
            data_dir=self.root,
            database_url=self.database_url,
            redis_url=self.redis.url,
            temporal_address=self.temporal.address,
            task_queue=self.task_queue,
            api_host=HOST,
            api_port=self.api_port,
            public_base_url=self.api_url,
            worker_metrics_port=free_port(HOST),
            worker_sdk_metrics_port=free_port(HOST),
            gateway_host=HOST,
            gateway_port=self.gateway_port or free_port(HOST),
            delivery_allow_networks=DELIVERY_SETTINGS["DELIVERY_ALLOW_NETWORKS"],
            delivery_retry_schedule=json.loads(DELIVERY_SETTINGS["DELIVERY_RETRY_SCHEDULE"]),
        )

    def _log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        child = ChildProcess(name, argv, env=env, log_path=self._log(name), cwd=self.root)
        self.processes[name] = child.start()

    def _spawn_switchboard(
        self, role: str, extra_env: dict[str, str] | None = None
    ) -> SwitchboardProcess:
        process = SwitchboardProcess(
            role, self._settings, self._log(role), cwd=self.root, extra_env=extra_env or {}
        )
        self.processes[role] = process.start()
        return process

    def _wait_ready(self, process: SwitchboardProcess) -> None:
        try:
            process.wait_ready(STARTUP_TIMEOUT)
        except ServiceError as error:
            raise RuntimeError(f"{process.name} did not start: {error}") from None

    def _wait_for_port(self, name: str, port: int) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{name} did not listen on {port} in time:\n{self.log_tail(name)}")


async def _register_partner(database_url: str, partner_id: str, secret: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        # A rate limit far above what two cores can offer, so 429s never cap the measurement.
        await create_partner(
            conn,
            partner_id,
            "Benchmark partner",
            rate_limit_per_second=1_000_000,
            auto_onboard_merchants=True,
            secret=secret,
        )
    finally:
        await conn.close()


# -- CPU accounting ------------------------------------------------------------------------------


OTHERS = "others"
"""CPU the machine spent outside the processes of this benchmark (other people's work)."""


@dataclass(frozen=True)
class CpuUse:
    """CPU used during one phase, by process, in percent of one core (200% = both of 2 cores)."""

    seconds: dict[str, float]
    wall_seconds: float

    @property
    def percent(self) -> dict[str, float]:
        return {name: 100.0 * used / self.wall_seconds for name, used in self.seconds.items()}

    def ms_per(self, process: str | None, count: int) -> float:
        """Milliseconds of CPU per item, ``count`` items, of ``process`` or (None) of every
        process of the stack; NaN if there were none."""
        if process is None:
            used = sum(value for name, value in self.seconds.items() if name != OTHERS)
        else:
            used = self.seconds.get(process, 0.0)
        return 1000 * used / count if count else math.nan

    @property
    def busiest(self) -> str:
        """The process of this benchmark that used the most CPU."""
        ours = {name: used for name, used in self.seconds.items() if name != OTHERS}
        return max(ours, key=ours.__getitem__) if ours else "—"

    @classmethod
    def total(cls, uses: list[CpuUse]) -> CpuUse:
        """The CPU use of several phases taken together."""
        seconds: dict[str, float] = {}
        for use in uses:
            for name, used in use.seconds.items():
                seconds[name] = seconds.get(name, 0.0) + used
        return cls(seconds, sum(use.wall_seconds for use in uses) or 1e-9)


class CpuMeter:
    """Reads CPU seconds per process (with its process tree) and machine-wide, around a phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        # This process's descendants are the other entries: count only its own time.
        self._own_only = {os.getpid()}

    def measure(self) -> _Measuring:
        """``with meter.measure() as phase: ...`` then ``phase.use``."""
        return _Measuring(self)

    def read(self) -> tuple[float, dict[str, float]]:
        per_process = {
            name: _cpu_seconds(proc, tree=proc.pid not in self._own_only)
            for name, proc in self._procs.items()
        }
        machine = psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq
        busy += getattr(machine, "steal", 0.0)
        return busy, per_process


class _Measuring:
    def __init__(self, meter: CpuMeter) -> None:
        self._meter = meter
        self.use = CpuUse({}, 1e-9)

    def __enter__(self) -> Self:
        self._started = time.monotonic()
        self._busy, self._per_process = self._meter.read()
        return self

    def __exit__(self, *_: object) -> None:
        wall = max(1e-9, time.monotonic() - self._started)
        busy, per_process = self._meter.read()
        seconds = {
            name: max(0.0, used - self._per_process.get(name, 0.0))
            for name, used in per_process.items()
        }
        seconds[OTHERS] = max(0.0, busy - self._busy - sum(seconds.values()))
        self.use = CpuUse(seconds, wall)


def _cpu_seconds(proc: psutil.Process, *, tree: bool) -> float:
    """CPU seconds of ``proc``, plus (``tree``) its reaped children and live descendants."""
    try:
        times = proc.cpu_times()
        total = times.user + times.system
        if not tree:
            return total
        total += times.children_user + times.children_system
        children = proc.children(recursive=True)
    except psutil.Error:
        return 0.0
    for child in children:
        try:
            child_times = child.cpu_times()
        except psutil.Error:
            continue
        total += child_times.user + child_times.system
    return total
