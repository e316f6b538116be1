"""Named retry policies and timeouts for every activity call; workflows never inline numbers."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from core.contracts import PAYOUT_REFUSED
from core.errors import PermanentEventError

__all__ = [
    "DELIVERIES_PER_LANE_RUN",
    "DELIVERY_ATTEMPT_MARGIN",
    "DELIVERY_BLOCKED_MAX_WAIT",
    "DELIVERY_BLOCKED_WAIT",
    "DELIVERY_RECORD_RETRY",
    "DEPENDENCY_GRACE",
    "ESCROW_LOCAL_BUDGET",
    "ESCROW_STEP_RETRY",
    "ESCROW_STEP_TIMEOUT",
    "EXCHANGE_RESYNC",
    "EXCHANGE_STEP_RETRY",
    "EXCHANGE_STEP_TIMEOUT",
    "LEDGER_LOCAL_RETRY_THRESHOLD",
    "LEDGER_RETRY",
    "LEDGER_TIMEOUT",
    "NOTIFY_RETRY",
    "NOTIFY_TIMEOUT",
    "PAYOUT_RETRY",
    "PAYOUT_TIMEOUT",
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

# Notifications (Slack, PagerDuty) retry until they get through: a page must never be lost.
# Retry-After on a 429 overrides the interval (the activity sets next_retry_delay).
NOTIFY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)
NOTIFY_TIMEOUT = timedelta(seconds=30)

# A delivery attempt records its outcome in Postgres; only that bookkeeping is retried here
# (Postgres away). The HTTP or SMTP outcome itself is a verdict the lane schedules around.
DELIVERY_RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
# Room for the attempt's own timeout plus the bookkeeping around it.
DELIVERY_ATTEMPT_MARGIN = timedelta(seconds=15)
# How long a lane waits for an earlier delivery to be handed to it before asking again; the
# wait doubles while the earlier one stays open, up to the maximum.
DELIVERY_BLOCKED_WAIT = timedelta(seconds=5)
DELIVERY_BLOCKED_MAX_WAIT = timedelta(minutes=5)
# A lane continues as new after this many deliveries, keeping its history short.
DELIVERIES_PER_LANE_RUN = 200

# An exchange request's timers re-check Postgres; like ledger steps they retry until Postgres
# answers. Notifications and analytics use the same policy at lower priorities.
EXCHANGE_STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    non_retryable_error_types=[PermanentEventError.__name__],
)
EXCHANGE_STEP_TIMEOUT = timedelta(seconds=15)
# With no timer due (processing, or pending once alerted), a request's workflow re-reads it this
# often, in case the api's signal about a change was lost.
EXCHANGE_RESYNC = timedelta(minutes=10)

# Escrow steps (transitions, debits, returns, settlements) retry until done: each is idempotent
# under its business key, and Postgres being away must only delay the saga. A refusal that no
# retry can cure (insufficient funds, a closed wallet) is raised non-retryable by the activity.
ESCROW_STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
ESCROW_STEP_TIMEOUT = timedelta(seconds=30)
# Escrow steps run as local activities first (no task round trip through the server) for this
# long, retries included; a step still failing then (Postgres away) is handed to a regular
# activity, whose retries the server keeps without growing the workflow's history.
ESCROW_LOCAL_BUDGET = timedelta(minutes=1)

# A payout transfer is retried with the same idempotency key (the provider answers a repeat
# with the original transfer) until it is confirmed or refused for good.
PAYOUT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=[PAYOUT_REFUSED],
)
PAYOUT_TIMEOUT = timedelta(seconds=60)
