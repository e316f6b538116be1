"""Escrow tests run the real api, worker and saga against real Postgres, Redis and Temporal; the
expiry test runs on the time-skipping server from this fixture."""

from __future__ import annotations

from tests.workflows.conftest import time_skipping

__all__ = ["time_skipping"]
