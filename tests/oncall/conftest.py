"""On-call tests run escalations on virtual time against a real Postgres and the real Slack and
PagerDuty sink; the time-skipping server and the sink come from these fixtures."""

from __future__ import annotations

from tests.workflows.conftest import time_skipping

__all__ = ["time_skipping"]
