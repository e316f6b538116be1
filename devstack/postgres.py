"""Embedded Postgres from the ``pgserver`` wheel: initdb, the server, and the application database,
and streaming replicas of it (hot standbys, for ``SWITCHBOARD_DATABASE_READ_URL``).

Data lives in ``data_dir/"postgres"``; as root, the server runs as an unprivileged system user
(Postgres refuses root) that this module creates and lets read the bundled installation.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from devstack.processes import (
    Service,
    ServiceError,
    alive,
    child_env,
    executable,
    package_dir,
)

__all__ = ["PG_SYSTEM_USER", "EmbeddedPostgres", "EmbeddedReplica"]

PG_SYSTEM_USER = "switchboard-pg"
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_UNIX_SOCKET_PATH = 107


def _pg_bin(name: str) -> Path:
    return executable(package_dir("pgserver") / "pginstall" / "bin" / name)


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


class EmbeddedPostgres(Service):
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

    def start_replica(self, data_dir: Path, port: int) -> EmbeddedReplica:
        """Start a hot standby streaming from this server (which must be running), with its data
        in ``data_dir/"postgres"``; use it as a context manager to stop it. Started again on the
        same ``data_dir`` it resumes streaming where it stopped."""
        replica = EmbeddedReplica(self, data_dir, port)
        replica.start()
        return replica

    def sql(self, statement: str, *, timeout: float = 10.0) -> str:
        """Run ``statement`` with psql on the application database; its unaligned output."""
        argv = [str(_pg_bin("psql")), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"]
        try:
            result = subprocess.run(
                [*argv, *self._client_args(self.database), "-c", statement],
                capture_output=True,
                text=True,
                env=child_env(),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise self._failure(f"did not answer {statement!r} in time") from None
        if result.returncode != 0:
            raise self._failure(f"refused {statement!r}: {result.stderr.strip()}")
        return result.stdout.strip()

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
            self._create_cluster(deadline)

    def _refuse_leftover_server(self) -> None:
        pid_file = self.pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if alive(pid) and b"postgres" in cmdline:
            raise ServiceError(
                f"another Postgres (pid {pid}) is still running on {self.pgdata}, probably left "
                f"over from an earlier run; stop it (kill -INT {pid}) and try again"
            )

    def _create_cluster(self, deadline: float) -> None:
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
        self._run_tool(argv, "initdb", deadline)

    def _run_tool(self, argv: list[str], what: str, deadline: float) -> None:
        """Run a setup tool as the server's user, its output into the server's log."""
        assert self._log is not None
        with self._log.open("ab") as log:
            try:
                result = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=child_env(),
                    timeout=max(1.0, deadline - time.monotonic()),
                    check=False,
                    **self._popen_kwargs(),
                )
            except subprocess.TimeoutExpired:
                raise self._failure(f"{what} did not finish in time") from None
        if result.returncode != 0:
            raise self._failure(f"{what} failed with code {result.returncode}")

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
            subprocess.run(probe, env=child_env(), stdin=subprocess.DEVNULL, check=False).returncode
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
                env=child_env(),
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise self._failure(f"did not create database {self.database!r} in time") from None
        if result.returncode != 0:
            raise self._failure(
                f"could not create database {self.database!r}: {result.stderr.strip()}"
            )


class EmbeddedReplica(EmbeddedPostgres):
    """A hot standby of an :class:`EmbeddedPostgres`: read-only, streaming its WAL.

    Made once with ``pg_basebackup -R`` (which writes ``standby.signal`` and the
    ``primary_conninfo`` to stream from), so it needs no setting on the primary beyond the
    defaults of Postgres 16 and initdb (``wal_level = replica``, ``max_wal_senders = 10``, trust
    for replication on loopback). No replication slot: a slot outlives its replica and would hold
    the primary's WAL for ever; a replica that falls further behind than the primary keeps WAL
    must be made again on a fresh ``data_dir``.

    :meth:`pause_replay` and :meth:`resume_replay` freeze and release what it shows while it
    keeps receiving WAL, which is how tests make it lag on purpose.
    """

    name = "Postgres replica"
    port_setting = "the port in SWITCHBOARD_DATABASE_READ_URL"

    def __init__(self, primary: EmbeddedPostgres, data_dir: Path, port: int) -> None:
        super().__init__(
            data_dir, port, host=primary.host, database=primary.database, user=primary.user
        )
        self.primary = primary

    def _create_cluster(self, deadline: float) -> None:
        argv = [
            str(_pg_bin("pg_basebackup")),
            *("-h", self.primary.host, "-p", str(self.primary.port), "-U", self.primary.user),
            "-D",
            str(self.pgdata),
            "--write-recovery-conf",
            "--wal-method=stream",
            # An immediate checkpoint on the primary: the default spreads it over minutes.
            "--checkpoint=fast",
        ]
        self._run_tool(argv, "pg_basebackup", deadline)

    def _after_ready(self, deadline: float) -> None:
        """Nothing to create: the databases are the primary's, and a standby is read-only."""

    def pause_replay(self, timeout: float = 10.0) -> None:
        """Stop applying WAL and return once replay has stopped: from then on the replica shows
        what it showed at that moment, however much the primary writes."""
        self.sql("SELECT pg_wal_replay_pause()")
        deadline = time.monotonic() + timeout
        while self.sql("SELECT pg_get_wal_replay_pause_state()") != "paused":
            if time.monotonic() > deadline:
                raise self._failure("did not pause its WAL replay in time")
            time.sleep(0.01)

    def resume_replay(self) -> None:
        """Apply WAL again: the replica catches up with everything received meanwhile."""
        self.sql("SELECT pg_wal_replay_resume()")
