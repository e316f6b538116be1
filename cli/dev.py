"""``switchboard dev``: the whole stack on embedded defaults, in one foreground command.

Starts the backing services (Postgres, Redis, Temporal with its Web UI, the SMTP, Slack and
PagerDuty sinks, the play endpoint; see :mod:`devstack.supervisor`), applies the migrations,
makes sure a demo partner and merchant exist, starts the api, the worker and the WebSocket
gateway under the dev supervisor (which restarts a crashed one and starts a dead service
again), registers the play endpoint as the demo merchant's endpoint, prints the URLs and a
ready-to-run example, then waits. Ctrl-C (or SIGTERM) stops the processes, then the services.
Data stays in ``SWITCHBOARD_DATA_DIR`` so the next run picks up where this one stopped.

This module imports :mod:`devstack`, whose servers are development packages: ``cli.main``
imports it only inside the ``dev`` command.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import Callable
from contextlib import ExitStack

import asyncpg
import httpx

from cli.client import operator_client
from cli.dev_state import DEMO_MERCHANT, DEMO_PARTNER, DevState, load_dev_state, save_dev_state
from core.db import migrate
from core.settings import Settings
from core.tenancy import create_merchant, create_partner
from devstack.play import PlayEndpoint, PlayReceiver, register_play_endpoint
from devstack.processes import ServiceError, SwitchboardProcess
from devstack.supervisor import Supervisor, child_settings, start_services
from devstack.temporal import TemporalDevServer

__all__ = ["run_dev"]


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
            services = start_services(settings, stack)
        except (ServiceError, OSError) as error:
            say(f"[red]{error}[/red]")
            return 1
        postgres = services.postgres
        say("Applying migrations ...")
        migrate(postgres.url)
        state = asyncio.run(_ensure_demo_tenants(settings, postgres.url))
        previous = load_dev_state(settings)
        if previous is not None:  # keep the play endpoint's secret until it is checked
            state = dataclasses.replace(
                state,
                play_endpoint_id=previous.play_endpoint_id,
                play_endpoint_secret=previous.play_endpoint_secret,
                play_url=previous.play_url,
            )
        save_dev_state(settings, state)
        supervisor = Supervisor(
            child_settings(settings, services), data_dir / "logs", services.supervised, say
        )
        stack.callback(supervisor.stop)
        supervisor.start()
        if not _wait_for_api(supervisor.processes["api"], timeout=60):
            say("[red]The api did not come up; see .switchboard/logs/api.log[/red]")
            return 1
        state = _ensure_play_endpoint(settings, state, services.play, say)
        say(_banner(settings, postgres.url, services.redis.url, services.temporal, state))
        say("[bold green]Switchboard is ready.[/bold green] Press Ctrl-C to stop.")
        exit_code = supervisor.run(lambda: stop_requested)
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
            secret = await create_partner(
                conn, DEMO_PARTNER, "Demo payment provider", auto_onboard_merchants=True
            )
        # The demo partner onboards the merchants `switchboard demo` invents on first sight
        # (data dirs from before tenancy existed get the setting too).
        await conn.execute(
            "UPDATE partners SET auto_onboard_merchants = true WHERE id = $1", DEMO_PARTNER
        )
        if not await conn.fetchval("SELECT 1 FROM merchants WHERE id = $1", DEMO_MERCHANT):
            await create_merchant(
                conn,
                DEMO_MERCHANT,
                name="Demo merchant",
                email="owner@merchant.example",
                partner_ids=[DEMO_PARTNER],
                actor="switchboard dev",
            )
    finally:
        await conn.close()
    return DevState(settings.public_base_url, DEMO_PARTNER, secret, DEMO_MERCHANT)


def _ensure_play_endpoint(
    settings: Settings, state: DevState, play: PlayReceiver, say: Callable[[str], None]
) -> DevState:
    """Register ``play`` as the demo merchant's endpoint (or keep the one registered before),
    hand its secret to the receiver and keep it in the dev state."""
    state = dataclasses.replace(state, play_url=play.url)
    known = None
    if state.play_endpoint_id and state.play_endpoint_secret:
        known = PlayEndpoint(state.play_endpoint_id, state.play_endpoint_secret)
    try:
        with operator_client(settings) as operator:
            endpoint = register_play_endpoint(operator, DEMO_MERCHANT, play.endpoint_url, known)
    except httpx.HTTPError as error:
        say(f"[yellow]Could not register the play endpoint: {error}[/yellow]")
        return state
    play.use_secrets([endpoint.secret])
    state = dataclasses.replace(
        state, play_endpoint_id=endpoint.endpoint_id, play_endpoint_secret=endpoint.secret
    )
    save_dev_state(settings, state)
    return state


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
    play_endpoint = state.play_endpoint_id or "(not registered)"
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
  Slack/PagerDuty    http://127.0.0.1:{settings.oncall_sink_port}  (./run switchboard pages list)
  Payout provider    http://127.0.0.1:{settings.payout_sink_port}  (SWITCHBOARD_PAYOUT_BASE_URL)
  Play endpoint      {state.play_url}  (./run switchboard play list)
  Logs               {settings.data_dir}/logs/
  Demo partner       {state.partner_id}   secret {state.partner_secret}
  Demo merchant      {state.merchant_id}   endpoint {play_endpoint} → play endpoint

Send a signed webhook (in another terminal):
  ./run switchboard send payment.succeeded --merchant {state.merchant_id} --amount 1250
  ./run switchboard demo --rate 20 --duration 30

The demo merchant's events arrive at the play endpoint as signed webhooks, verified there.
To receive them yourself too (URL of your own receiver):
  ./run switchboard endpoints add {state.merchant_id} http://127.0.0.1:9000/webhooks
"""
