"""Child processes of the development stack: backing services and Switchboard's own processes.

This module owns how a child is spawned (its own session, its output in a log file, no stray
``PG*`` or ``SWITCHBOARD_*`` variables), probed until ready, stopped (signal, then SIGKILL after a
timeout) and reaped together with anything it forked. :class:`Service` is the lifecycle the
embedded Postgres, Redis and Temporal servers share; :class:`SwitchboardProcess` runs ``api``,
``worker``, ``gateway`` or ``dev`` with a :class:`~core.settings.Settings` turned into the
``SWITCHBOARD_*`` variables it reads (:func:`settings_env`, the only place that does so).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Self

import httpx
from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from core.errors import SwitchboardError
from core.settings import Settings

__all__ = [
    "REPO",
    "WORKER_READY",
    "ChildProcess",
    "ProcessExited",
    "Service",
    "ServiceError",
    "SwitchboardProcess",
    "alive",
    "child_env",
    "descendants",
    "ensure_port_free",
    "executable",
    "log_tail",
    "package_dir",
    "process_env",
    "session_members",
    "settings_env",
    "spawn_switchboard",
    "standalone_settings",
    "stop_all",
]

REPO = Path(__file__).resolve().parent.parent
WORKER_READY = b"worker ready on task queue"
"""What the worker logs once it polls its task queues."""
DEV_READY = b"Switchboard is ready"
"""What ``switchboard dev`` prints once its stack answers."""
_LOG_TAIL_LINES = 40
_POLL_SECONDS = 0.05
_REAP_SECONDS = 10.0


class ServiceError(SwitchboardError):
    """An embedded service could not be started (or located); the message says why."""


class ProcessExited(ServiceError):
    """A child process exited while something waited for it to become ready."""


# -- environment ---------------------------------------------------------------------------------


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``SWITCHBOARD_*`` variables that make a child process read ``settings``.

    Only the fields ``settings`` sets explicitly (from its environment, ``.env`` or keyword
    arguments) are written; the others keep their defaults in the child, and defaults that are
    derived from other settings (as ``switchboard dev`` derives the gateway's Origins) stay
    derived. Secrets are written in clear, lists as JSON.
    """
    env: dict[str, str] = {}
    for name in sorted(settings.model_fields_set & type(settings).model_fields.keys()):
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, list | dict):
            text = json.dumps(value)
        else:
            text = str(value)
        env[f"SWITCHBOARD_{name.upper()}"] = text
    return env


def process_env(
    settings: Settings, extra: Mapping[str, str] = MappingProxyType({})
) -> dict[str, str]:
    """This process's environment without any ``SWITCHBOARD_*`` variable, then ``settings``'s."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    return inherited | settings_env(settings) | dict(extra)


class _Standalone(Settings):
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def standalone_settings(**values: Any) -> Settings:
    """Settings made of ``values`` and the defaults only: no environment variable, no ``.env``."""
    return _Standalone(**values)


def child_env() -> dict[str, str]:
    """The environment of a backing service: ours without libpq's ``PG*`` variables."""
    # Stray libpq variables (PGHOST, PGSSLMODE, PGOPTIONS, ...) would redirect or alter our probes.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


# -- ports, binaries and logs ----------------------------------------------------------------


def ensure_port_free(host: str, port: int, what: str, setting: str) -> None:
    """Raise ServiceError if ``host:port`` cannot be listened on (another process holds it)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Same option the servers use, so a lingering TIME_WAIT does not count as "taken".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            reason = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ServiceError(
                f"{what} cannot listen on {host}:{port}: port {port} is {reason}. Stop whatever "
                f"holds it, or choose another port with {setting}."
            ) from exc


def package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it (imports have side effects)."""
    spec = importlib.util.find_spec(package)
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise ServiceError(f"package {package!r} is not installed; reinstall with ./run")
    return Path(next(iter(locations))).resolve()


def executable(path: Path) -> Path:
    """``path`` if it can be run, else ServiceError."""
    if not os.access(path, os.X_OK):
        raise ServiceError(f"{path} is missing or not executable")
    return path


def log_tail(path: Path | None, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, or a note saying it is absent."""
    if path is None:
        return "(no log file)"
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read()
    except OSError:
        return f"(log file {path} is missing)"
    text = data.decode("utf-8", errors="replace").splitlines()[-lines:]
    return "\n".join(text) if text else f"(log file {path} is empty)"


# -- process table (Linux /proc; empty answers elsewhere) ----------------------------------------


def _stat_fields(pid: int | str) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state, ppid, pgrp, session, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _process_table() -> list[tuple[int, list[str]]]:
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    table = []
    for entry in entries:
        if entry.isdigit() and (fields := _stat_fields(entry)) is not None:
            table.append((int(entry), fields))
    return table


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    children: dict[int, list[int]] = {}
    for child, fields in _process_table():
        children.setdefault(int(fields[1]), []).append(child)
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def session_members(session: int) -> list[int]:
    """Live processes of session ``session`` (a child we started leads its own session, so this
    finds what it forked even after it died and they were re-parented)."""
    return [
        pid
        for pid, fields in _process_table()
        if int(fields[3]) == session and fields[0] not in ("Z", "X")
    ]


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    fields = _stat_fields(pid)
    if fields is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not Path("/proc").is_dir()
    return fields[0] not in ("Z", "X")


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_gone(pids: Iterable[int], timeout: float = _REAP_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    pending = list(pids)
    while (pending := [pid for pid in pending if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc`` and everything it forked (in its session or below it), then reap it."""
    if proc.poll() is None:
        # Freeze it first so it cannot fork while its children are being collected.
        _signal(proc.pid, signal.SIGSTOP)
        victims = set(descendants(proc.pid))
        _signal(proc.pid, signal.SIGKILL)
        proc.wait()
    else:
        victims = set()
        proc.wait()
    victims |= set(session_members(proc.pid))
    for pid in victims:
        _signal(pid, signal.SIGKILL)
    _wait_gone(victims)


def _spawn(
    argv: Sequence[str],
    *,
    log_path: Path | None,
    env: Mapping[str, str],
    cwd: Path | None = None,
    **kwargs: Any,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own, stdin closed, stdout and stderr into ``log_path``
    (appended; discarded when None)."""
    if log_path is None:
        return _popen(argv, subprocess.DEVNULL, env, cwd, kwargs)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return _popen(argv, log, env, cwd, kwargs)


def _popen(
    argv: Sequence[str], out: Any, env: Mapping[str, str], cwd: Path | None, kwargs: dict[str, Any]
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env),
            cwd=cwd,
            **kwargs,
        )
    except OSError as exc:
        raise ServiceError(f"could not run {argv[0]}: {exc}") from exc


# -- any child process -------------------------------------------------------------------------


class ChildProcess:
    """A long-running child: ``start``, ``wait_ready``, then ``stop`` or ``kill`` (each reaps it
    and whatever it forked)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path | None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the last start, else None."""
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def poll(self) -> int | None:
        """The exit code once it has exited (reaping it), else None (also before ``start``)."""
        return self.process.poll() if self.process is not None else None

    def start(self) -> Self:
        assert not self.running, f"{self.name} is already running"
        self._before_start()
        self.process = _spawn(self.argv, log_path=self.log_path, env=self.env, cwd=self.cwd)
        return self

    def ready(self) -> bool:
        """One readiness probe; raises ProcessExited if the process has exited."""
        code = self.poll()
        if code is not None:
            raise ProcessExited(
                f"{self.name} exited with {code}; last lines of its log:\n{self.log_tail()}"
            )
        return self._probe()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until ``ready``; ServiceError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name} was not ready in time:\n{self.log_tail()}")
            time.sleep(_POLL_SECONDS)

    async def wait_ready_async(self, timeout: float = 60.0) -> None:
        """``wait_ready`` for an event loop (the probes run in a thread)."""
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(self.ready):
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name} was not ready in time:\n{self.log_tail()}")
            await asyncio.sleep(_POLL_SECONDS)

    def send_signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, SIGKILL after ``timeout`` seconds; returns the exit code (None if never run)."""
        stop_all([self], timeout)
        return self.poll()

    def kill(self) -> int | None:
        """SIGKILL it and everything it forked, and reap them; returns the exit code."""
        if self.process is None:
            return None
        _kill_tree(self.process)
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def _before_start(self) -> None:
        """Note what ``_probe`` compares against (e.g. how often a log already says ready)."""

    def _probe(self) -> bool:
        return True


def stop_all(processes: Iterable[ChildProcess], timeout: float = 15.0) -> None:
    """SIGTERM every running one at once, then SIGKILL (with what it forked) whichever is still
    up after ``timeout`` seconds; everything is reaped on return."""
    chosen = [p for p in processes if p.process is not None]
    for child in chosen:
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in chosen:
        assert child.process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(max(0.0, deadline - time.monotonic()))
        _kill_tree(child.process)


# -- Switchboard's own processes ---------------------------------------------------------------


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


class SwitchboardProcess(ChildProcess):
    """``python -m cli.main <role>`` (``api``, ``worker``, ``gateway`` or ``dev``) reading
    ``settings`` (plus ``extra_env``), ready when it answers: the api's ``/healthz``, the gateway's
    ``/healthz`` reporting Redis, a new "ready" line in the worker's or dev's log.

    ``python_args`` go before ``-m cli.main`` (e.g. ``-m cProfile -o out``).
    """

    def __init__(
        self,
        role: str,
        settings: Settings,
        log_path: Path | None,
        *,
        cwd: Path | None = None,
        extra_env: Mapping[str, str] = MappingProxyType({}),
        python_args: Sequence[str] = (),
    ) -> None:
        super().__init__(
            role,
            [sys.executable, *python_args, "-m", "cli.main", role],
            env=process_env(settings, extra_env),
            log_path=log_path,
            cwd=cwd,
        )
        self.role = role
        self.settings = settings
        self._ready_lines = 0

    def _ready_marker(self) -> bytes | None:
        return {"worker": WORKER_READY, "dev": DEV_READY}.get(self.role)

    def _count_ready_lines(self) -> int:
        marker = self._ready_marker()
        if marker is None or self.log_path is None:
            return 0
        try:
            return self.log_path.read_bytes().count(marker)
        except FileNotFoundError:
            return 0

    def _before_start(self) -> None:
        if self._ready_marker() is not None and self.log_path is None:
            raise ServiceError(f"{self.role} needs a log file to tell when it is ready")
        self._ready_lines = self._count_ready_lines()

    def _probe(self) -> bool:
        if self.role == "api":
            return self._get(self.settings.api_host, self.settings.api_port) is not None
        if self.role == "gateway":
            body = self._get(
                self.settings.gateway_host, self.settings.gateway_port, any_status=True
            )
            return body is not None and body.get("redis") is True
        return self._count_ready_lines() > self._ready_lines

    @staticmethod
    def _get(host: str, port: int, *, any_status: bool = False) -> dict[str, Any] | None:
        try:
            response = httpx.get(f"http://{_local(host)}:{port}/healthz", timeout=1.0)
            if not any_status and response.status_code != 200:
                return None
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        return body if isinstance(body, dict) else None


def spawn_switchboard(
    role: str, settings: Settings, log_path: Path | None, **options: Any
) -> SwitchboardProcess:
    """Start ``role`` with ``settings`` (see :class:`SwitchboardProcess` for ``options``)."""
    return SwitchboardProcess(role, settings, log_path, **options).start()


# -- backing services ----------------------------------------------------------------------------


class Service:
    """Shared lifecycle of one backing service (Postgres, Redis, Temporal) run as a child.

    Each runs in its own session so a terminal Ctrl-C reaches only the supervisor, which then
    stops the services in the order it chooses. Data lives under the service's ``data_dir``, so
    a restart (after ``stop``, ``kill`` or a crash) sees the same data.
    """

    name = "service"
    port_setting = "its port setting"
    stop_signal = signal.SIGTERM

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    @property
    def running(self) -> bool:
        """Whether the service process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the running service, else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    def exited(self) -> int | None:
        """If the service was started and has died since, reap it (and what it forked) and
        return its exit code; else None. It can be started again afterwards."""
        proc = self._proc
        if proc is None or proc.poll() is None:
            return None
        _kill_tree(proc)
        self._proc = None
        return proc.returncode

    def start(self, timeout: float = 60) -> None:
        """Start the service and return once it answers; no-op if already running."""
        if self.running:
            return
        deadline = time.monotonic() + timeout
        self._preflight()
        ensure_port_free(self.host, self.port, self.name, self.port_setting)
        self._check_extra_ports()
        self._prepare(deadline)
        assert self._log is not None
        self._proc = _spawn(
            self._command(), log_path=self._log, env=child_env(), **self._popen_kwargs()
        )
        try:
            self._wait_until(deadline, self._ready)
            self._after_ready(deadline)
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout: float = 30) -> None:
        """Ask the service to shut down cleanly; SIGKILL it if it takes longer than ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.poll() is not None:
            _kill_tree(proc)  # it died on its own: reap what it left; keep its log
            return
        _signal(proc.pid, self.stop_signal)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc = proc
            self.kill()
            return
        _kill_tree(proc)
        self._after_stop()

    def kill(self) -> None:
        """SIGKILL the service and any processes it forked, and wait until they are gone."""
        proc = self._proc
        if proc is None:
            return
        _kill_tree(proc)
        self._proc = None

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

    # Hooks for subclasses.

    def _preflight(self) -> None:
        """Refuse to start early, before anything is created, if it cannot work."""

    def _prepare(self, deadline: float) -> None:
        """Create directories and anything else needed before the process can start."""

    def _check_extra_ports(self) -> None:
        """Check ports other than the main one."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _popen_kwargs(self) -> dict[str, Any]:
        return {}

    def _ready(self) -> bool:
        raise NotImplementedError

    def _after_ready(self, deadline: float) -> None:
        """Work to do once the service answers (e.g. create a database)."""

    def _after_stop(self) -> None:
        """Clean-up after a clean stop."""

    # Helpers.

    def _wait_until(self, deadline: float, probe: Callable[[], bool]) -> None:
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise self._failure(f"exited with code {code} while starting")
            if probe():
                return
            if time.monotonic() >= deadline:
                raise self._failure("did not become ready in time")
            time.sleep(_POLL_SECONDS)

    def _failure(self, what: str) -> ServiceError:
        return ServiceError(
            f"{self.name} on {self.host}:{self.port} {what}. "
            f"Last lines of {self._log}:\n{log_tail(self._log)}"
        )
