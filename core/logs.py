"""Structured JSON logging for every process: one line per record, with the event id when known.

Call :func:`configure_logging` once from a composition root. Code logs through the standard
``logging`` module (and ``workflow.logger`` / ``activity.logger``, which add Temporal ids); pass
``extra={"event_id": ...}`` to carry the webhook's event id through ingress, relay and activities.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable

from pythonjsonlogger.json import JsonFormatter

__all__ = ["RepeatedFailureFilter", "configure_logging"]


class RepeatedFailureFilter(logging.Filter):
    """Log an identical failure once per ``window`` seconds, then once more with its count.

    A record carrying an exception is "identical" to an earlier one when the logger, the level,
    the exception's type and its message match (ids in the log message itself do not matter): a
    poison event retried by 400 workflows is one line, not 400 tracebacks a second. When the
    same failure shows up after the window, it is logged again with ``repeated`` set to how
    many were suppressed in between. Records without an exception always pass.
    """

    def __init__(
        self,
        window: float = 60.0,
        max_kinds: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._window = window
        self._clock = clock
        self._max_kinds = max_kinds
        # failure -> (when it was last logged, how many were suppressed since)
        self._seen: OrderedDict[tuple[str, int, str, str], tuple[float, int]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        error = record.exc_info[1]
        failure = (record.name, record.levelno, type(error).__qualname__, str(error)[:300])
        now = self._clock()
        logged_at, suppressed = self._seen.get(failure, (None, 0))
        if logged_at is not None and now - logged_at < self._window:
            self._seen[failure] = (logged_at, suppressed + 1)
            return False
        if suppressed:
            record.repeated = suppressed
            record.msg = f"{record.msg} (and {suppressed} more like it in {self._window:g}s)"
        self._seen[failure] = (now, 0)
        self._seen.move_to_end(failure)
        while len(self._seen) > self._max_kinds:
            self._seen.popitem(last=False)
        return True


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as one JSON object."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RepeatedFailureFilter())
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
