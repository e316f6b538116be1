"""``switchboard dev``: the whole stack on embedded defaults, in one foreground command.

Starts Postgres, Redis (Valkey) and the Temporal dev server (with its Web UI and a persistent
database file) from installed wheels and an SMTP sink that keeps every email in a Maildir,
applies the migrations, starts the api, the worker and the WebSocket gateway as child processes,
makes sure a demo partner and merchant exist, prints the URLs and a ready-to-run example, then
waits. Ctrl-C (or SIGTERM) stops the processes, then the services, in that order. Data stays in
``SWITCHBOARD_DATA_DIR`` so the next run picks up where this one stopped.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg

from api.partners import create_partner
from cli.outbound import maildir
from core.contracts import SEARCH_ATTRIBUTES
from core.db import migrate
from core.settings import Settings
from devstack.mailsink import MailSink
from devstack.postgres import EmbeddedPostgres
from devstack.processes import ServiceError, SwitchboardProcess, stop_all
from devstack.redis import EmbeddedRedis
from devstack.temporal import TemporalDevServer

__all__ = ["DEMO_MERCHANT", "DEMO_PARTNER", "DevState", "load_dev_state", "run_dev"]

DEMO_PARTNER = "demo"
DEMO_MERCHANT = "merchant_demo"
STATE_FILE = "dev.json"


@dataclass(frozen=True)
class DevState:
    """What ``switchboard dev`` tells other commands (``send``, ``demo``) about the stack."""

    api_url: str
    partner_id: str
    partner_secret: str
    merchant_id: str


def load_dev_state(settings: Settings) -> DevState | None:
    """The state file the last ``switchboard dev`` wrote, if any."""
    path = settings.data_dir / STATE_FILE
    if not path.exists():
        return None
    return DevState(**json.loads(path.read_text()))


def _port(url: str, default: int) -> int:
    return urlsplit(url if "//" in url else f"//{url}").port or default


def run_dev(settings: Settings, say: Callable[[str], None]) -> int:
    """Run the stack until interrupted; returns the process exit code."""
    data_dir = settings.data_dir.absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    stop_requested = False

    def request_stop(*_: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with ExitStack() as stack:
        try:
            say("Starting Postgres, Redis and Temporal ...")
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
            mail = stack.enter_context(
                MailSink(maildir(settings).absolute(), port=settings.smtp_port)
            )
        except (ServiceError, OSError) as error:
            say(f"[red]{error}[/red]")
            return 1
        children = settings.model_copy(
            update={
                "database_url": postgres.url,
                "redis_url": redis.url,
                "temporal_address": temporal.address,
                "temporal_ui_url": temporal.ui_url or settings.temporal_ui_url,
                "smtp_host": mail.host,
                "smtp_port": mail.port,
                # Development only: let merchant endpoints on this machine receive deliveries.
                "delivery_allow_networks": settings.delivery_allow_networks
                or "127.0.0.0/8,::1/128",
            }
        )
        say("Applying migrations ...")
        migrate(postgres.url)
        state = asyncio.run(_ensure_demo_tenants(settings, postgres.url))
        (data_dir / STATE_FILE).write_text(json.dumps(state.__dict__, indent=2))
        processes = {
            name: SwitchboardProcess(name, children, data_dir / "logs" / f"{name}.log")
            for name in ("api", "worker", "gateway")
        }
        stack.callback(stop_all, processes.values())
        for process in processes.values():
            process.start()
        if not _wait_for_api(processes["api"], timeout=60):
            say("[red]The api did not come up; see .switchboard/logs/api.log[/red]")
            return 1
        say(_banner(settings, postgres.url, redis.url, temporal, state))
        say("[bold green]Switchboard is ready.[/bold green] Press Ctrl-C to stop.")
        exit_code = 0
        while not stop_requested:
            for name, process in processes.items():
                if (code := process.poll()) is not None:
                    say(f"[red]{name} exited with {code}; stopping.[/red]")
                    stop_requested, exit_code = True, 1
            time.sleep(0.2)
        say("Stopping ...")
    say("Stopped.")
    return exit_code


async def _ensure_demo_tenants(settings: Settings, database_url: str) -> DevState:
    conn = await asyncpg.connect(database_url)
    try:
        secret = await conn.fetchval(
            "SELECT secret FROM partner_secrets WHERE partner_id = $1"
            " AND (expires_at IS NULL OR expires_at > now()) ORDER BY id DESC LIMIT 1",
            DEMO_PARTNER,
        )
        if secret is None:
            secret = await create_partner(conn, DEMO_PARTNER, "Demo payment provider")
        await conn.execute(
            "INSERT INTO merchants (id, name, email) VALUES ($1, 'Demo merchant',"
            " 'owner@merchant.example') ON CONFLICT (id) DO NOTHING",
            DEMO_MERCHANT,
        )
    finally:
        await conn.close()
    return DevState(settings.public_base_url, DEMO_PARTNER, secret, DEMO_MERCHANT)


def _wait_for_api(process: SwitchboardProcess, *, timeout: float) -> bool:
    try:
        process.wait_ready(timeout)
    except ServiceError:
        return False
    return True


def _banner(
    settings: Settings,
    database_url: str,
    redis_url: str,
    temporal: TemporalDevServer,
    state: DevState,
) -> str:
    api = settings.public_base_url
    return f"""
[bold]Switchboard (development)[/bold]
  Ingress            POST {api}/webhooks/{{partner_id}}
  Operator API docs  {api}/docs      (API key: SWITCHBOARD_ADMIN_API_KEY, default sb_dev_admin_key)
  Live dashboard     {api}/dashboard?merchant={state.merchant_id}
  Gateway            {settings.gateway_public_url}/ws   (health and metrics: /healthz, /metrics)
  Temporal Web UI    {temporal.ui_url}
  Temporal address   {temporal.address}
  Postgres           {database_url}
  Redis              {redis_url}
  Mail sink          smtp://{settings.smtp_host}:{settings.smtp_port}  (./run switchboard mail list)
  Logs               {settings.data_dir}/logs/
  Demo partner       {state.partner_id}   secret {state.partner_secret}
  Demo merchant      {state.merchant_id}

Send a signed webhook (in another terminal):
  ./run switchboard send payment.succeeded --merchant {state.merchant_id} --amount 1250
  ./run switchboard demo --rate 20 --duration 30

Receive the demo merchant's events as signed webhooks (URL of your own receiver):
  ./run switchboard endpoints add {state.merchant_id} http://127.0.0.1:9000/webhooks
"""
