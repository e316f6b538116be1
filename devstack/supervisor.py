"""The dev supervisor: what ``switchboard dev`` starts, and how it keeps it running.

:func:`start_services` starts the backing services on the ports of the settings;
:func:`child_settings` is what the api, the worker and the gateway read (the services' URLs,
the mail sink, the Slack and PagerDuty sink, the payout provider sink, loopback deliveries such
as the play endpoint's, dashboard Origins that follow the api's port).
:class:`Supervisor` runs those three: a crashed one is restarted with exponential backoff
(1 s doubling to 30 s, back to 1 s after a minute up) and the console says so; a backing
service that dies is named, reaped and started again in place (same port, same data); on stop,
everything it started goes, restarts included.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from core.contracts import SEARCH_ATTRIBUTES
from core.settings import PAGERDUTY_SINK_PATH, SLACK_SINK_PATH, Settings
from devstack.mailsink import MailSink, maildir
from devstack.oncall_sink import OncallSink
from devstack.payout_sink import PayoutSink
from devstack.play import PlayReceiver
from devstack.postgres import EmbeddedPostgres
from devstack.processes import Service, ServiceError, SwitchboardProcess, stop_all
from devstack.redis import EmbeddedRedis
from devstack.temporal import TemporalDevServer

__all__ = [
    "ROLES",
    "DevServices",
    "Supervisor",
    "child_settings",
    "dashboard_origins",
    "start_services",
]

ROLES = ("api", "worker", "gateway")
RESTART_FIRST_DELAY = 1.0
RESTART_MAX_DELAY = 30.0
STABLE_AFTER = 60.0
"""Seconds up after which a restarted process's backoff starts again from the first delay."""
POLL_INTERVAL = 0.2
SERVICE_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class DevServices:
    """The running backing services of one dev stack."""

    postgres: EmbeddedPostgres
    redis: EmbeddedRedis
    temporal: TemporalDevServer
    mail: MailSink
    oncall: OncallSink
    play: PlayReceiver
    payout: PayoutSink

    @property
    def supervised(self) -> tuple[Service, ...]:
        """The services run as child processes (the mail, on-call and payout sinks and the
        play endpoint are threads of this one)."""
        return (self.postgres, self.redis, self.temporal)


def _port(url: str, default: int) -> int:
    return urlsplit(url if "//" in url else f"//{url}").port or default


def start_services(settings: Settings, stack: contextlib.ExitStack) -> DevServices:
    """Start Postgres, Redis, Temporal (with its Web UI), the mail, on-call and payout sinks
    and the play endpoint under ``settings.data_dir``, on the ports ``settings`` names;
    ``stack`` stops them."""
    data_dir = settings.data_dir.absolute()
    postgres = EmbeddedPostgres(data_dir / "postgres", _port(settings.database_url, 55432))
    redis = EmbeddedRedis(data_dir / "redis", _port(settings.redis_url, 56379))
    temporal = TemporalDevServer(
        data_dir / "temporal",
        _port(settings.temporal_address, 57233),
        ui_port=_port(settings.temporal_ui_url, 58233),
        search_attributes=[key.name for key in SEARCH_ATTRIBUTES],
    )
    for service in (postgres, redis, temporal):
        stack.enter_context(service)
    mail = stack.enter_context(MailSink(maildir(settings).absolute(), port=settings.smtp_port))
    oncall = stack.enter_context(OncallSink(settings.oncall_sink_port))
    play = stack.enter_context(PlayReceiver(settings.play_endpoint_port))
    payout = stack.enter_context(
        PayoutSink(settings.payout_sink_port, api_key=settings.payout_api_key.get_secret_value())
    )
    return DevServices(postgres, redis, temporal, mail, oncall, play, payout)


def dashboard_origins(settings: Settings) -> list[str]:
    """Origins a browser shows for the dashboard: the api's public URL, and loopback by name
    and by address on its port (so a shifted api port moves them)."""
    public = urlsplit(settings.public_base_url)
    origins = [f"{public.scheme}://{public.netloc}"]
    for port in dict.fromkeys((public.port, settings.api_port)):
        if port is not None:
            origins += [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
    return list(dict.fromkeys(origins))


def child_settings(settings: Settings, services: DevServices) -> Settings:
    """What the api, the worker and the gateway of the dev stack read."""
    update: dict[str, object] = {
        "database_url": services.postgres.url,
        "redis_url": services.redis.url,
        "temporal_address": services.temporal.address,
        "temporal_ui_url": services.temporal.ui_url or settings.temporal_ui_url,
        "smtp_host": services.mail.host,
        "smtp_port": services.mail.port,
        "slack_base_url": f"{services.oncall.url}{SLACK_SINK_PATH}",
        "pagerduty_base_url": f"{services.oncall.url}{PAGERDUTY_SINK_PATH}",
        "payout_base_url": services.payout.url,
        # Development only: let merchant endpoints on this machine receive deliveries.
        "delivery_allow_networks": settings.delivery_allow_networks or "127.0.0.0/8,::1/128",
    }
    if "gateway_allowed_origins" not in settings.model_fields_set:
        update["gateway_allowed_origins"] = dashboard_origins(settings)
    return settings.model_copy(update=update)


@dataclass
class _Child:
    process: SwitchboardProcess
    started_at: float
    restarts: int = 0
    restart_at: float | None = None


class Supervisor:
    """Keeps the api, the worker and the gateway up and the backing services watched.

    ``check`` does one round and never blocks on a process in backoff; ``run`` repeats it until
    asked to stop. A service that cannot be started again ends ``run`` with exit code 1.
    """

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        services: Sequence[Service],
        say: Callable[[str], None],
        *,
        roles: Sequence[str] = ROLES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.services = tuple(services)
        self._say = say
        self._clock = clock
        self._children = {
            role: _Child(SwitchboardProcess(role, settings, log_dir / f"{role}.log"), 0.0)
            for role in roles
        }

    @property
    def processes(self) -> dict[str, SwitchboardProcess]:
        return {role: child.process for role, child in self._children.items()}

    def start(self) -> None:
        """Start every process (not waiting for any to be ready)."""
        for child in self._children.values():
            child.process.start()
            child.started_at = self._clock()

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after 15 s) and reap what they forked."""
        stop_all(self.processes.values())

    def check(self) -> None:
        """Restart the processes that are due, note the ones that exited, and start again any
        backing service that died. Raises ServiceError if one cannot be started again."""
        for service in self.services:
            self._check_service(service)
        for role, child in self._children.items():
            self._check_process(role, child)

    def run(self, stop_requested: Callable[[], bool]) -> int:
        """``check`` every 0.2 s until ``stop_requested()``; returns the exit code for dev."""
        while not stop_requested():
            try:
                self.check()
            except ServiceError as error:
                self._say(f"[red]{error}; stopping.[/red]")
                return 1
            time.sleep(POLL_INTERVAL)
        return 0

    def _check_service(self, service: Service) -> None:
        code = service.exited()
        if code is None:
            return
        self._say(f"[red]{service.name} exited with {code}; starting it again.[/red]")
        try:
            service.start(SERVICE_START_TIMEOUT)
        except ServiceError as error:
            raise ServiceError(f"{service.name} could not be started again: {error}") from None
        self._say(f"{service.name} is back on {service.host}:{service.port}.")

    def _check_process(self, role: str, child: _Child) -> None:
        now = self._clock()
        if child.restart_at is not None:
            if now >= child.restart_at:
                child.restart_at = None
                child.started_at = now
                child.process.start()
                self._say(f"{role} restarted (pid {child.process.pid}).")
            return
        code = child.process.poll()
        if code is None:
            if child.restarts and now - child.started_at >= STABLE_AFTER:
                child.restarts = 0
            return
        child.process.kill()  # reap whatever it forked (uvicorn workers)
        delay = min(RESTART_FIRST_DELAY * 2**child.restarts, RESTART_MAX_DELAY)
        child.restarts += 1
        child.restart_at = now + delay
        self._say(
            f"[yellow]{role} exited with {code}; restarting in {delay:g}s"
            f" (restart {child.restarts})[/yellow]"
        )
