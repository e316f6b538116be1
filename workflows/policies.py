"""Named retry policies and timeouts for every activity call; workflows never inline numbers."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from core.errors import PermanentEventError

__all__ = [
    "DEPENDENCY_GRACE",
    "LEDGER_LOCAL_RETRY_THRESHOLD",
    "LEDGER_RETRY",
    "LEDGER_TIMEOUT",
    "PUBLISH_RETRY",
    "PUBLISH_TIMEOUT",
]

# Ledger steps retry until they succeed: Postgres being away for a while must only delay them.
# The short first interval matters for the ordering wait, where an earlier event of the same
# entity is usually milliseconds from committing.
LEDGER_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=50),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=5),
    non_retryable_error_types=[PermanentEventError.__name__],
)
LEDGER_TIMEOUT = timedelta(seconds=15)
# Past this, a retrying ledger step waits on a workflow timer instead of holding its workflow
# task: a workflow queued behind an earlier event must not occupy a worker slot that the
# earlier event's workflow needs to run.
LEDGER_LOCAL_RETRY_THRESHOLD = timedelta(seconds=1)

# After the dependency window, a refund whose payment was received but not yet applied (the
# pipeline fell behind) re-checks this often instead of being parked.
DEPENDENCY_GRACE = timedelta(minutes=1)

PUBLISH_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=100),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
)
PUBLISH_TIMEOUT = timedelta(seconds=10)
