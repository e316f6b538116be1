"""Typed settings for every Switchboard process, read from ``SWITCHBOARD_*`` variables and ``.env``.

Composition roots (``worker.py``, ``api.app.create_app``, the CLI) build one ``Settings`` and
pass it down; nothing imports a global instance. The defaults are the embedded development
stack that ``switchboard dev`` starts, on ports chosen not to collide with a system Postgres
(5432), Redis (6379) or Temporal (7233).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEV_ADMIN_API_KEY",
    "DEV_DASHBOARD_TOKEN_SECRET",
    "DEV_PAGERDUTY_ROUTING_KEY",
    "DEV_PAYOUT_API_KEY",
    "DEV_SLACK_SIGNING_SECRET",
    "DEV_SLACK_TOKEN",
    "PAGERDUTY_SINK_PATH",
    "SLACK_SINK_PATH",
    "Settings",
]

DEV_ADMIN_API_KEY = "sb_dev_admin_key"
DEV_DASHBOARD_TOKEN_SECRET = "sb_dev_dashboard_token_secret_not_for_production"
DEV_SLACK_TOKEN = "xoxb-switchboard-dev-sink"
DEV_SLACK_SIGNING_SECRET = "switchboard_dev_slack_signing_secret"
DEV_PAGERDUTY_ROUTING_KEY = "switchboarddevsinkroutingkey0000"
DEV_PAYOUT_API_KEY = "sk_dev_payout_sink"
# Where the dev stack's on-call sink serves each API (devstack/oncall_sink.py).
SLACK_SINK_PATH = "/slack/api/"
PAGERDUTY_SINK_PATH = "/pagerduty"


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


class Settings(BaseSettings):
    """Everything a Switchboard process reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="SWITCHBOARD_", env_file=".env", extra="ignore", frozen=True
    )

    environment: Literal["development", "test", "production"] = Field(
        "development", description="Placeholder secrets are refused in production."
    )
    data_dir: Path = Field(
        Path(".switchboard"), description="Where `switchboard dev` keeps its databases."
    )

    # Stores and engine.
    database_url: str = Field(
        "postgresql://switchboard@127.0.0.1:55432/switchboard",
        description="Application Postgres (business truth and the webhook inbox).",
    )
    database_read_url: str | None = Field(
        None,
        description="A streaming replica of database_url for the dashboard's reads (sync, desk"
        " stats), which then say how fresh they are; unset, they read database_url. Never used"
        " for a decision (claims, idempotency, money). While it is down those reads answer 503.",
    )
    database_pool_size: int = Field(10, ge=1, description="asyncpg pool size per process.")
    database_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="Longest the api waits on Postgres for a connection or a statement; the"
        " ingress then answers 503 with Retry-After (a hung server never hangs a request).",
    )
    redis_url: str = Field("redis://127.0.0.1:56379/0", description="Redis for real-time fan-out.")
    temporal_address: str = Field("127.0.0.1:57233", description="Temporal frontend host:port.")
    temporal_namespace: str = "default"
    temporal_ui_url: str = Field(
        "http://127.0.0.1:58233", description="Base URL of the Temporal Web UI (trace links)."
    )
    task_queue: str = Field("switchboard-webhooks", description="Task queue of webhook workflows.")
    workflow_sandbox: bool = Field(
        False,
        description="Run workflows in Temporal's sandbox (tests and the replay check always do;"
        " off by default because it costs ~8 ms of worker CPU per webhook).",
    )

    # HTTP surfaces.
    api_host: str = "127.0.0.1"
    api_port: int = Field(8400, description="Ingress, operator API, OpenAPI docs at /docs.")
    api_workers: int = Field(1, ge=1, description="uvicorn worker processes of `switchboard api`.")
    public_base_url: str = Field(
        "http://127.0.0.1:8400", description="How operators reach the api (used in trace links)."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Interface the worker's /metrics servers bind (0.0.0.0 in containers).",
    )
    worker_metrics_port: int = Field(9464, description="Worker's Prometheus /metrics (app).")
    worker_sdk_metrics_port: int = Field(9465, description="Temporal SDK metrics of the worker.")
    gateway_port: int = Field(8401, description="WebSocket gateway.")
    gateway_open_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="Time a gateway connection has from connecting to the end of its handshake"
        " (HTTP request included; /healthz and /metrics too), else it is closed.",
    )

    # What a client may send the api, and how fast (api/limits.py).
    api_max_connections: int = Field(
        1000,
        ge=2,
        description="Open connections per api process; at the limit requests are answered 503"
        " and further connections closed at once.",
    )
    header_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="Time a client has to send a request line and headers, from connecting or"
        " from the first byte of its next request (else 408 and close).",
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Largest request line plus headers (else 431 and close)."
    )
    keep_alive_seconds: int = Field(
        5, ge=1, description="An idle kept-alive api connection is closed after this long."
    )
    operator_max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest request body on every route but the ingress."
    )
    body_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Time a client has to send a whole request body, on every route, from the end"
        " of its headers (else 408 and close).",
    )

    # Ingress rules.
    max_body_bytes: int = Field(256 * 1024, ge=1024, description="Largest webhook body accepted.")
    signature_tolerance_seconds: int = Field(
        300, ge=1, description="Allowed clock skew, both ways."
    )
    partner_rate_limit_per_second: int = Field(
        2000, ge=1, description="Default per-partner webhook rate limit (Redis fixed window)."
    )
    inbox_batch_max: int = Field(500, ge=1, description="Largest group-committed inbox insert.")
    exchange_rate_limit_per_minute: int = Field(
        10, ge=1, description="Exchange requests one customer may create a minute (Redis)."
    )
    exchange_pending_sla_seconds: float = Field(
        900.0,
        gt=0,
        description="An exchange request left pending (unclaimed) this long raises the"
        " exchange_pending_sla alert; it resolves once the request is claimed or ends.",
    )
    exchange_assigned_timeout_seconds: float = Field(
        1800.0,
        gt=0,
        description="An exchange request assigned this long without progress goes back to"
        " pending (audited as system:sla; the assignee sees it on the desk).",
    )
    exchange_task_queue: str = Field(
        "switchboard-exchange",
        description="Task queue of exchange request workflows (their SLA timers, customer"
        " notifications and analytics), apart from the webhook backlog.",
    )

    # Processing rules.
    dependency_window_seconds: float = Field(
        3600.0, gt=0, description="How long a refund waits for its payment before dead-lettering."
    )
    relay_batch_size: int = Field(200, ge=1, description="Inbox rows the relay claims per round.")
    relay_max_in_flight: int = Field(
        400, ge=1, description="Started-but-unfinished workflows the relay allows at once."
    )
    relay_partner_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of relay_max_in_flight one partner's workflows may hold, so one "
        "partner's backlog or stuck traffic never takes every slot.",
    )
    relay_stalled_after_seconds: float = Field(
        30.0,
        gt=0,
        description="A workflow still running this long after its start (retrying, or waiting "
        "behind an earlier event) stops counting against the relay's budgets.",
    )
    relay_start_concurrency: int = Field(32, ge=1, description="Concurrent start calls.")
    relay_sweep_seconds: float = Field(
        5.0, gt=0, description="Safety sweep for NOTIFYs missed while disconnected."
    )

    # Outbound deliveries.
    delivery_task_queue: str = Field(
        "switchboard-deliveries",
        description="Task queue of delivery lanes (kept apart so money never waits behind them).",
    )
    delivery_retry_schedule: list[float] = Field(
        [0, 5, 300, 1800, 7200, 18000, 36000, 36000],
        description="Seconds before each attempt (JSON list); its length is the attempt count.",
    )
    delivery_jitter: float = Field(0.2, ge=0, lt=1, description="± share of each retry delay.")
    delivery_timeout_seconds: float = Field(
        30.0, gt=0, description="Whole-request timeout of one delivery attempt."
    )
    delivery_max_in_flight: int = Field(
        200, ge=1, description="Delivery attempts one worker runs at once."
    )
    endpoint_max_in_flight: int = Field(
        20, ge=1, description="Attempts one worker sends to one endpoint at once."
    )
    delivery_allow_networks: str = Field(
        "",
        description="Comma-separated CIDRs outbound deliveries may reach although private"
        " (development and tests only); empty by default.",
    )
    circuit_failure_threshold: int = Field(
        5,
        ge=1,
        description="Consecutive failures that open a destination's circuit breaker (a merchant"
        " endpoint, or the payout provider).",
    )
    circuit_cooldown_seconds: float = Field(
        30.0, gt=0, description="First open period; doubles per re-trip up to the maximum."
    )
    circuit_max_cooldown_seconds: float = Field(600.0, gt=0)
    endpoint_failing_alert_after: int = Field(
        3, ge=1, description="Consecutive failures that raise the endpoint-failing alert."
    )
    endpoint_disable_after_seconds: float = Field(
        5 * 24 * 3600.0,
        gt=0,
        description="An endpoint failing without a success for this long is disabled.",
    )
    endpoint_secret_overlap_seconds: float = Field(
        24 * 3600.0, ge=0, description="How long a rotated-out endpoint secret keeps signing."
    )
    smtp_host: str = Field("127.0.0.1", description="SMTP server for receipts and notices.")
    smtp_port: int = Field(58025, description="SMTP port (the dev stack's mail sink listens here).")
    smtp_sender: str = Field("Switchboard <notifications@switchboard.localhost>")
    smtp_timeout_seconds: float = Field(30.0, gt=0)

    # Operator access.
    admin_api_key: SecretStr = Field(
        SecretStr(DEV_ADMIN_API_KEY), description="Bootstrap operator key with every scope."
    )
    idempotency_key_retention_seconds: float = Field(
        24 * 3600.0,
        ge=60,
        description="How long an Idempotency-Key's first response is kept and replayed (Stripe "
        "keeps 24 h); after that the key may be purged, but the ledger still moves money once "
        "per key.",
    )
    escrow_wait_seconds: float = Field(
        10.0,
        ge=0,
        description="Longest an escrow request (create, release, refund) waits for its outcome"
        " before answering 202 with the escrow's URL.",
    )
    escrow_compensation_alert_seconds: float = Field(
        300.0,
        gt=0,
        description="An escrow whose failed funding is not fully returned to its sources after"
        " this long raises an escrow_compensation_slow alert (the saga keeps retrying).",
    )

    # Real-time gateway.
    gateway_host: str = Field(
        "127.0.0.1", description="Interface the gateway binds (0.0.0.0 in containers)."
    )
    gateway_public_url: str = Field(
        "ws://127.0.0.1:8401", description="How browsers reach the gateway (the dashboard page)."
    )
    dashboard_token_secret: SecretStr = Field(
        SecretStr(DEV_DASHBOARD_TOKEN_SECRET),
        description="HS256 key signing dashboard tokens (api) and verifying them (gateway).",
    )
    dashboard_token_ttl_seconds: int = Field(
        600, ge=10, le=86400, description="Lifetime of a dashboard token; connections end with it."
    )
    gateway_allowed_origins: list[str] = Field(
        ["http://127.0.0.1:8400", "http://localhost:8400"],
        description="Exact Origin values allowed to open the WebSocket (JSON list).",
    )
    gateway_allow_missing_origin: bool = Field(
        True,
        description="Accept handshakes without Origin (non-browser clients; browsers always"
        " send one, so this does not open cross-site hijacking). The token is still required.",
    )
    gateway_auth_timeout_seconds: float = Field(
        5.0, gt=0, description="Time a connection has to send its auth message (else 1008)."
    )
    gateway_max_message_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest client message (larger closes with 1009)."
    )
    gateway_client_buffer_bytes: int = Field(
        1024 * 1024,
        ge=4096,
        description="Unsent bytes a client may fall behind by before it is dropped (3008).",
    )
    gateway_ping_interval_seconds: float = Field(20.0, gt=0, description="Keepalive pings.")
    gateway_ping_timeout_seconds: float = Field(
        20.0, gt=0, description="A peer that does not answer a ping in time is closed."
    )
    gateway_connect_rate_per_source: float = Field(
        20.0, gt=0, description="Handshakes per second per source address (burst 2x); 429 above."
    )
    gateway_connect_rate_global: float = Field(
        500.0, gt=0, description="Handshakes per second per instance (burst 2x); 429 above."
    )
    gateway_max_connections: int = Field(
        20000, ge=1, description="Open connections per instance; 503 above."
    )
    gateway_max_connections_per_merchant: int = Field(
        50,
        ge=1,
        description="Open connections per feed topic (a merchant's, the exchange desk, one"
        " exchange request) per instance; 1013 above.",
    )
    gateway_client_messages_per_minute: int = Field(
        100, ge=1, description="Messages a client may send per minute after auth; 1008 above."
    )
    gateway_gap_grace_seconds: float = Field(
        0.1,
        ge=0,
        description="How long an out-of-order event waits for the missing ones on Redis before"
        " they are read from Postgres.",
    )
    gateway_max_gap_seconds: float = Field(
        15.0,
        gt=0,
        description="A merchant feed that cannot fill a gap (Postgres unreachable) for this long"
        " closes its clients with 3010.",
    )
    gateway_max_pending_events: int = Field(
        10_000, ge=1, description="Events a feed may hold back behind a gap; 3010 above."
    )
    gateway_max_pending_bytes: int = Field(
        32 * 1024 * 1024,
        ge=4096,
        description="Bytes a feed may hold back behind a gap; 3010 above.",
    )
    gateway_max_replay_events: int = Field(
        10_000,
        ge=1,
        description="Most events replayed to a resuming client; further behind closes with 3010"
        " (reload with the sync endpoint).",
    )
    gateway_redis_alert_after_seconds: float = Field(
        30.0, gt=0, description="Redis unreachable this long raises the gateway alert."
    )
    gateway_outage_poll_seconds: float = Field(
        1.0, gt=0, description="While Redis is down, clients are fed from Postgres this often."
    )
    gateway_position_check_seconds: float = Field(
        10.0,
        gt=0,
        description="How often every feed is compared with Postgres while Redis is up (catches"
        " a last event whose publish Redis dropped).",
    )

    # On-call (the policy, core/alerting.yaml by default, routes alerts to these channels).
    alerting_policy: Path = Field(
        Path(__file__).resolve().parent / "alerting.yaml",
        description="The on-call routing and escalation policy (YAML; see the default file).",
    )
    oncall_task_queue: str = Field(
        "switchboard-oncall",
        description="Task queue of escalations and the health monitor (apart from the webhook "
        "backlog they may be reporting).",
    )
    monitor_interval_seconds: float = Field(
        30.0, gt=0, description="How often the health monitor's Temporal Schedule runs it."
    )
    monitor_schedule: bool = Field(
        True, description="Whether the worker keeps the health monitor's Temporal Schedule."
    )
    inbox_age_alert_seconds: float = Field(
        120.0, gt=0, description="Oldest webhook still waiting in the inbox before an alert."
    )
    backlog_age_alert_seconds: float = Field(
        60.0, gt=0, description="Oldest task waiting on a Temporal task queue before an alert."
    )
    decline_window_seconds: float = Field(
        300.0, gt=0, description="Window in which a merchant's payment failure rate is judged."
    )
    decline_min_failures: int = Field(
        10, ge=1, description="Failures in the window below which no decline alert is raised."
    )
    decline_rate_factor: float = Field(
        3.0,
        gt=1,
        description="A decline alert when the window's failure rate exceeds this many times the "
        "merchant's rate over the previous day, and half of its payments.",
    )
    oncall_sink_port: int = Field(
        58026,
        description="Port of the dev stack's Slack and PagerDuty sink (development only).",
    )
    play_endpoint_port: int = Field(
        58027,
        description="Port of the dev stack's play endpoint, which receives and verifies the demo "
        "merchant's webhooks (development only).",
    )
    slack_base_url: str = Field(
        f"http://127.0.0.1:58026{SLACK_SINK_PATH}",
        description="Slack Web API base URL (https://slack.com/api/ in production).",
    )
    slack_bot_token: SecretStr = Field(
        SecretStr(DEV_SLACK_TOKEN), description="Slack bot token (chat:write)."
    )
    slack_channel: str = Field("#switchboard-oncall", description="Slack channel for alerts.")
    slack_signing_secret: SecretStr = Field(
        SecretStr(DEV_SLACK_SIGNING_SECRET),
        description="Verifies Slack's interactive callbacks (the Acknowledge button).",
    )
    pagerduty_base_url: str = Field(
        f"http://127.0.0.1:58026{PAGERDUTY_SINK_PATH}",
        description="PagerDuty Events API v2 base URL (production: https://events.pagerduty.com).",
    )
    pagerduty_routing_key: SecretStr = Field(
        SecretStr(DEV_PAGERDUTY_ROUTING_KEY),
        description="PagerDuty Events API v2 integration (routing) key.",
    )

    # The payout provider (external transfers: escrow releases).
    payout_sink_port: int = Field(
        58028, description="Port of the dev stack's payout provider sink (development only)."
    )
    payout_base_url: str = Field(
        "http://127.0.0.1:58028",
        description="Payout provider's API base URL (POST {base}/v1/transfers); the dev sink's"
        " by default, refused in production.",
    )
    payout_api_key: SecretStr = Field(
        SecretStr(DEV_PAYOUT_API_KEY), description="Bearer API key of the payout provider."
    )
    payout_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Whole-request timeout of one transfer call; a timed-out transfer is retried"
        " with the same idempotency key.",
    )

    log_level: str = "INFO"

    @model_validator(mode="after")
    def _refuse_the_dev_sinks(self) -> Settings:
        if self.environment != "production":
            return self
        for name in ("slack_base_url", "pagerduty_base_url", "payout_base_url"):
            if _is_loopback(getattr(self, name)):
                raise ValueError(f"SWITCHBOARD_{name.upper()} points at the dev sink in production")
        for name, dev in (
            ("slack_bot_token", DEV_SLACK_TOKEN),
            ("slack_signing_secret", DEV_SLACK_SIGNING_SECRET),
            ("pagerduty_routing_key", DEV_PAGERDUTY_ROUTING_KEY),
            ("payout_api_key", DEV_PAYOUT_API_KEY),
        ):
            if getattr(self, name).get_secret_value() == dev:
                raise ValueError(f"SWITCHBOARD_{name.upper()} must be set in production")
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if (
            self.environment == "production"
            and self.admin_api_key.get_secret_value() == DEV_ADMIN_API_KEY
        ):
            raise ValueError("SWITCHBOARD_ADMIN_API_KEY must be set to a real secret in production")
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_dashboard_secret(self) -> Settings:
        if (
            self.environment == "production"
            and self.dashboard_token_secret.get_secret_value() == DEV_DASHBOARD_TOKEN_SECRET
        ):
            raise ValueError(
                "SWITCHBOARD_DASHBOARD_TOKEN_SECRET must be set to a real secret in production"
            )
        return self

    def workflow_ui_url(self, workflow_id: str) -> str:
        """Link to a workflow's page in the Temporal Web UI."""
        return (
            f"{self.temporal_ui_url}/namespaces/{self.temporal_namespace}/workflows/{workflow_id}"
        )
