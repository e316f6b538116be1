"""Structured JSON logging for every process: one line per record, with the event id when known.

Call :func:`configure_logging` once from a composition root. Code logs through the standard
``logging`` module (and ``workflow.logger`` / ``activity.logger``, which add Temporal ids); pass
``extra={"event_id": ...}`` to carry the webhook's event id through ingress, relay and activities.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

__all__ = ["configure_logging"]


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as one JSON object."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access logs duplicate our own metrics at 1,000 webhooks/s; keep them out of the stream.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
