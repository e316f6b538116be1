"""Repeated identical failures are logged once with a count, not a traceback per attempt."""

from __future__ import annotations

import logging

from core.logs import RepeatedFailureFilter


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def fail(logger: logging.Logger, message: str, error: Exception) -> None:
    try:
        raise error
    except Exception:
        logger.warning(message, exc_info=True)


def test_identical_failures_are_logged_once_then_counted() -> None:
    logger = logging.getLogger("tests.repeated")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    collect = Collect()
    collect.addFilter(RepeatedFailureFilter(window=3600))
    logger.addHandler(collect)
    try:
        for n in range(400):
            fail(logger, f"activity for evt_{n} failed", ValueError("date out of range"))
        fail(logger, "activity failed", KeyError("other"))
        logger.info("no exception: always logged")
        logger.info("no exception: always logged")
    finally:
        logger.removeHandler(collect)
    assert [r.getMessage() for r in collect.records] == [
        "activity for evt_0 failed",
        "activity failed",
        "no exception: always logged",
        "no exception: always logged",
    ]


def test_after_the_window_the_failure_is_logged_again_with_its_count() -> None:
    now = [0.0]
    logger = logging.getLogger("tests.repeated.window")
    logger.propagate = False
    collect = Collect()
    collect.addFilter(RepeatedFailureFilter(window=60, clock=lambda: now[0]))
    logger.addHandler(collect)
    try:
        for n in range(3):
            fail(logger, f"try {n}", ValueError("same"))
        now[0] = 61.0
        fail(logger, "try 3", ValueError("same"))
        fail(logger, "try 4", ValueError("same"))
    finally:
        logger.removeHandler(collect)
    assert [r.getMessage() for r in collect.records] == [
        "try 0",
        "try 3 (and 2 more like it in 60s)",
    ]
    assert getattr(collect.records[1], "repeated", None) == 2
