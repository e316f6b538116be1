"""Typed settings for every Switchboard process, read from ``SWITCHBOARD_*`` variables and ``.env``.

Composition roots (``worker.py``, ``api.app.create_app``, the CLI) build one ``Settings`` and
pass it down; nothing imports a global instance. The defaults are the embedded development
stack that ``switchboard dev`` starts, on ports chosen not to collide with a system Postgres
(5432), Redis (6379) or Temporal (7233).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEV_ADMIN_API_KEY", "Settings"]

DEV_ADMIN_API_KEY = "sb_dev_admin_key"


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
    database_pool_size: int = Field(10, ge=1, description="asyncpg pool size per process.")
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

    # Ingress rules.
    max_body_bytes: int = Field(256 * 1024, ge=1024, description="Largest webhook body accepted.")
    body_timeout_seconds: float = Field(
        10.0, gt=0, description="Time a client has to send the whole body (slowloris guard)."
    )
    signature_tolerance_seconds: int = Field(
        300, ge=1, description="Allowed clock skew, both ways."
    )
    partner_rate_limit_per_second: int = Field(
        2000, ge=1, description="Default per-partner webhook rate limit (Redis fixed window)."
    )
    inbox_batch_max: int = Field(500, ge=1, description="Largest group-committed inbox insert.")

    # Processing rules.
    dependency_window_seconds: float = Field(
        3600.0, gt=0, description="How long a refund waits for its payment before dead-lettering."
    )
    relay_batch_size: int = Field(200, ge=1, description="Inbox rows the relay claims per round.")
    relay_max_in_flight: int = Field(
        400, ge=1, description="Started-but-unfinished workflows the relay allows at once."
    )
    relay_start_concurrency: int = Field(32, ge=1, description="Concurrent start calls.")
    relay_sweep_seconds: float = Field(
        5.0, gt=0, description="Safety sweep for NOTIFYs missed while disconnected."
    )

    # Operator access.
    admin_api_key: SecretStr = Field(
        SecretStr(DEV_ADMIN_API_KEY), description="Bootstrap operator key with every scope."
    )

    log_level: str = "INFO"

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if (
            self.environment == "production"
            and self.admin_api_key.get_secret_value() == DEV_ADMIN_API_KEY
        ):
            raise ValueError("SWITCHBOARD_ADMIN_API_KEY must be set to a real secret in production")
        return self

    def workflow_ui_url(self, workflow_id: str) -> str:
        """Link to a workflow's page in the Temporal Web UI."""
        return (
            f"{self.temporal_ui_url}/namespaces/{self.temporal_namespace}/workflows/{workflow_id}"
        )
