"""Payload contracts shared by the api, the relay, workflows and activities.

Pure data only: frozen dataclasses passed through Temporal, the event-type table, the status
enums with their drawn transitions, search attributes, and the one place workflow ids, Postgres
NOTIFY channels and Redis channels are named. Safe to import inside the workflow sandbox (no
I/O, no heavy imports).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from temporalio.common import SearchAttributeKey

from core.states import Transitions

__all__ = [
    "ALERTS_CHANNEL",
    "ALREADY_DONE",
    "DELIVERIES_CHANNEL",
    "DELIVERY_TRANSITIONS",
    "ENTITY_ID",
    "ESCROW_ID",
    "ESCROW_MOVES_CHANNEL",
    "ESCROW_REFUSED",
    "ESCROW_TRANSITIONS",
    "EVENT_TYPE",
    "EXCHANGE_TRANSITIONS",
    "HEALTH_CHECK_ACTIVITY",
    "INBOX_CHANNEL",
    "KNOWN_EVENT_TYPES",
    "MERCHANT_ID",
    "NOTIFY_ACTIVITY",
    "PARTNER_ID",
    "PAYOUT_REFUSED",
    "PAYOUT_TRANSFER_ACTIVITY",
    "SEARCH_ATTRIBUTES",
    "WEBHOOK_ID",
    "WEBHOOK_TRANSITIONS",
    "WORKFLOW_STARTS_CHANNEL",
    "ApplyInput",
    "ApplyResult",
    "AttemptInput",
    "AttemptResult",
    "DeadLetterCause",
    "DeliveryRef",
    "DeliveryStatus",
    "EscalationInput",
    "EscalationState",
    "EscalationStepPlan",
    "EscrowAlertInput",
    "EscrowInput",
    "EscrowMoveInput",
    "EscrowRequest",
    "EscrowSettleInput",
    "EscrowSource",
    "EscrowSourceInput",
    "EscrowStatus",
    "EventType",
    "ExchangeNoticeInput",
    "ExchangeState",
    "ExchangeStatus",
    "ExchangeTimerInput",
    "ExchangeTimerResult",
    "ExchangeWorkflowInput",
    "HealthReport",
    "LaneInput",
    "NotifyAction",
    "NotifyInput",
    "NotifyResult",
    "Outcome",
    "ParkInput",
    "PayoutTransferInput",
    "PayoutTransferResult",
    "Priority",
    "PublishInput",
    "Verdict",
    "WebhookInput",
    "WebhookStatus",
    "delivery_lane_workflow_id",
    "entity_key",
    "escalation_workflow_id",
    "escrow_workflow_id",
    "exchange_workflow_id",
    "merchant_channel",
    "priority_of",
    "webhook_workflow_id",
]


class EventType(StrEnum):
    """Inbound event types Switchboard understands (v1). Anything else is stored as ignored."""

    PAYMENT_SUCCEEDED = "payment.succeeded"
    PAYMENT_FAILED = "payment.failed"
    REFUND_SUCCEEDED = "refund.succeeded"
    BALANCE_UPDATED = "balance.updated"


class Priority(IntEnum):
    """Temporal priority keys (1 is served first). Money before balances, balances before noise
    (unknown events, analytics); customer notifications in between, at Temporal's default."""

    MONEY = 1
    STANDARD = 3
    BALANCE = 4
    OTHER = 5


class WebhookStatus(StrEnum):
    """Lifecycle of one received webhook row (the inbox), as :data:`WEBHOOK_TRANSITIONS` draws it:

    * (new) → received
    * received → started, waiting, processed, ignored, dead_lettered
    * started → waiting, processed, ignored, dead_lettered
    * waiting → waiting, processed, dead_lettered
    * processed → (final)
    * ignored → (final)
    * dead_lettered → received

    The ingress inserts ``received``; the relay moves it to ``started`` unless its workflow
    (started eagerly) already settled it; the ledger settles it, or sets a refund ``waiting``
    until its payment arrives (again, after its window, while that payment is still queued);
    any open row can be parked, and only an operator's replay (or linking the merchant) sends a
    dead letter back to ``received``.
    """

    RECEIVED = "received"  # durably recorded, acknowledged, workflow not started yet
    STARTED = "started"  # its workflow is running
    WAITING = "waiting"  # a refund waiting for its payment
    PROCESSED = "processed"  # took effect (or was a harmless repeat of an effect)
    IGNORED = "ignored"  # unknown type, stored as received
    DEAD_LETTERED = "dead_lettered"  # parked for an operator: see dead_letters.reason


WEBHOOK_TRANSITIONS = Transitions(
    "webhook",
    initial=WebhookStatus.RECEIVED,
    moves={
        WebhookStatus.RECEIVED: {
            WebhookStatus.STARTED,
            WebhookStatus.WAITING,
            WebhookStatus.PROCESSED,
            WebhookStatus.IGNORED,
            WebhookStatus.DEAD_LETTERED,
        },
        WebhookStatus.STARTED: {
            WebhookStatus.WAITING,
            WebhookStatus.PROCESSED,
            WebhookStatus.IGNORED,
            WebhookStatus.DEAD_LETTERED,
        },
        WebhookStatus.WAITING: {
            WebhookStatus.WAITING,
            WebhookStatus.PROCESSED,
            WebhookStatus.DEAD_LETTERED,
        },
        WebhookStatus.PROCESSED: set(),
        WebhookStatus.IGNORED: set(),
        WebhookStatus.DEAD_LETTERED: {WebhookStatus.RECEIVED},
    },
)
"""Every status change a webhook row may make; the ledger checks its writes against it."""


class DeliveryStatus(StrEnum):
    """Lifecycle of one outbound delivery row, as :data:`DELIVERY_TRANSITIONS` draws it:

    * (new) → pending
    * pending → succeeded, dead_lettered, cancelled
    * succeeded → (final)
    * dead_lettered → pending
    * cancelled → (final)

    The ledger plans a delivery ``pending`` (one for a disabled endpoint is dead-lettered in
    the same statement, so it can be replayed once the endpoint is re-enabled); an attempt
    settles it as ``succeeded``, dead-letters it (attempts exhausted, 410 Gone, endpoint
    disabled) or cancels it (endpoint deleted); only an operator's replay sends a dead letter
    back to ``pending``, as a new cycle with the same webhook-id.
    """

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"


DELIVERY_TRANSITIONS = Transitions(
    "delivery",
    initial=DeliveryStatus.PENDING,
    moves={
        DeliveryStatus.PENDING: {
            DeliveryStatus.SUCCEEDED,
            DeliveryStatus.DEAD_LETTERED,
            DeliveryStatus.CANCELLED,
        },
        DeliveryStatus.SUCCEEDED: set(),
        DeliveryStatus.DEAD_LETTERED: {DeliveryStatus.PENDING},
        DeliveryStatus.CANCELLED: set(),
    },
)
"""Every status change a delivery row may make; each writer names its move from this table."""


class ExchangeStatus(StrEnum):
    """Lifecycle of one exchange request, as :data:`EXCHANGE_TRANSITIONS` draws it:

    * (new) → created
    * created → pending, cancelled
    * pending → assigned, cancelled
    * assigned → pending, assigned, processing, cancelled, failed
    * processing → processing, completed, failed
    * completed → (final)
    * cancelled → (final)
    * failed → (final)

    A request is created and queued (``pending``) in one transaction; exactly one operator's
    claim makes it ``assigned`` to them; only the assignee releases it (back to ``pending``) or
    advances it; an admin's reassignment keeps its status (``assigned → assigned``,
    ``processing → processing``). Postgres refuses any other change (migration 0006).
    """

    CREATED = "created"
    PENDING = "pending"  # waiting in the desk's queue for an operator to claim it
    ASSIGNED = "assigned"
    PROCESSING = "processing"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


EXCHANGE_TRANSITIONS = Transitions(
    "exchange_request",
    initial=ExchangeStatus.CREATED,
    moves={
        ExchangeStatus.CREATED: {ExchangeStatus.PENDING, ExchangeStatus.CANCELLED},
        ExchangeStatus.PENDING: {ExchangeStatus.ASSIGNED, ExchangeStatus.CANCELLED},
        ExchangeStatus.ASSIGNED: {
            ExchangeStatus.PENDING,
            ExchangeStatus.ASSIGNED,
            ExchangeStatus.PROCESSING,
            ExchangeStatus.CANCELLED,
            ExchangeStatus.FAILED,
        },
        ExchangeStatus.PROCESSING: {
            ExchangeStatus.PROCESSING,
            ExchangeStatus.COMPLETED,
            ExchangeStatus.FAILED,
        },
        ExchangeStatus.COMPLETED: set(),
        ExchangeStatus.CANCELLED: set(),
        ExchangeStatus.FAILED: set(),
    },
)
"""Every status change an exchange request may make; :mod:`core.exchange` checks its writes
against it and migration 0006 holds the same table for the database's trigger (a test compares
them)."""


class EscrowStatus(StrEnum):
    """Lifecycle of one escrow, as :data:`ESCROW_TRANSITIONS` draws it:

    * (new) → created
    * created → funding
    * funding → funded, failed
    * funded → releasing, refunding
    * releasing → released, release_failed
    * release_failed → releasing, refunding
    * refunding → refunded
    * released, refunded, failed → (final)

    ``failed`` means funding failed and every debit already made was returned; ``release_failed``
    is the visible hold after the payout provider refused a transfer for good (nothing was
    paid, the money is still held): an operator retries the release or refunds.
    """

    CREATED = "created"
    FUNDING = "funding"
    FUNDED = "funded"
    RELEASING = "releasing"
    RELEASED = "released"
    RELEASE_FAILED = "release_failed"
    REFUNDING = "refunding"
    REFUNDED = "refunded"
    FAILED = "failed"


ESCROW_TRANSITIONS = Transitions(
    "escrow",
    initial=EscrowStatus.CREATED,
    moves={
        EscrowStatus.CREATED: {EscrowStatus.FUNDING},
        EscrowStatus.FUNDING: {EscrowStatus.FUNDED, EscrowStatus.FAILED},
        EscrowStatus.FUNDED: {EscrowStatus.RELEASING, EscrowStatus.REFUNDING},
        EscrowStatus.RELEASING: {EscrowStatus.RELEASED, EscrowStatus.RELEASE_FAILED},
        EscrowStatus.RELEASE_FAILED: {EscrowStatus.RELEASING, EscrowStatus.REFUNDING},
        EscrowStatus.REFUNDING: {EscrowStatus.REFUNDED},
        EscrowStatus.RELEASED: set(),
        EscrowStatus.REFUNDED: set(),
        EscrowStatus.FAILED: set(),
    },
)
"""Every status change an escrow may make; the escrow code checks its writes against it and the
database holds the same table for its trigger."""


PAYOUT_TRANSFER_ACTIVITY = "payout_transfer"
"""The activity that asks the payout provider to pay an external account (transfer first)."""

PAYOUT_REFUSED = "PayoutRefused"
"""ApplicationError type of a transfer the provider refused for good (never retried)."""


@dataclass(frozen=True)
class PayoutTransferInput:
    """One transfer to an external payout account, at most once per ``idempotency_key`` (the
    provider returns the original transfer for a repeat). Money in integer minor units."""

    idempotency_key: str
    account: str
    amount: int
    currency: str
    reference: str


@dataclass(frozen=True)
class PayoutTransferResult:
    """The provider's transfer: its id, and whether it answered a repeat of an earlier call."""

    transfer_id: str
    replayed: bool


class DeadLetterCause(StrEnum):
    """Why a webhook was parked (``dead_letters.cause``)."""

    UNLINKED_MERCHANT = "unlinked_merchant"  # replayed when an operator links the two
    PAYMENT_NEVER_ARRIVED = "payment_never_arrived"
    OTHER = "other"


class Outcome(StrEnum):
    """What applying one event did."""

    APPLIED = "applied"
    UNCHANGED = "unchanged"  # valid but no effect: a repeat, or a balance older than the stored one
    WAITING = "waiting"
    IGNORED = "ignored"
    DEAD_LETTERED = "dead_lettered"


KNOWN_EVENT_TYPES = frozenset(EventType)

PARTNER_ID = SearchAttributeKey.for_keyword("PartnerId")
MERCHANT_ID = SearchAttributeKey.for_keyword("MerchantId")
ENTITY_ID = SearchAttributeKey.for_keyword("EntityId")
EVENT_TYPE = SearchAttributeKey.for_keyword("EventType")
WEBHOOK_ID = SearchAttributeKey.for_keyword("WebhookId")
ESCROW_ID = SearchAttributeKey.for_keyword("EscrowId")
SEARCH_ATTRIBUTES = (PARTNER_ID, MERCHANT_ID, ENTITY_ID, EVENT_TYPE, WEBHOOK_ID, ESCROW_ID)


def entity_key(event_type: str, data: dict[str, object]) -> str | None:
    """The ordering key of an event: refunds share their payment's key so they queue behind it."""
    if event_type in (EventType.PAYMENT_SUCCEEDED, EventType.PAYMENT_FAILED):
        return f"payment:{data['payment_id']}"
    if event_type == EventType.REFUND_SUCCEEDED:
        return f"payment:{data['payment_id']}"
    if event_type == EventType.BALANCE_UPDATED:
        return f"balance:{data['merchant_id']}:{data['currency']}"
    return None


def priority_of(event_type: str) -> Priority:
    """Payments and refunds first, balance updates next, unknown events last."""
    if event_type == EventType.BALANCE_UPDATED:
        return Priority.BALANCE
    if event_type in KNOWN_EVENT_TYPES:
        return Priority.MONEY
    return Priority.OTHER


# Temporal on SQL stores workflow ids in VARCHAR(255); leave room for ":replay-N".
MAX_WORKFLOW_BASE_ID = 240


def webhook_workflow_id(partner_id: str, webhook_id: str, run: int = 0) -> str:
    """The workflow id of one partner webhook: a business key, so a repeat start is a no-op.

    ``run`` counts operator replays; each replay is a workflow of its own, findable beside the
    original. Very long webhook ids are replaced by their SHA-256 so the id fits Temporal's
    255-character limit on SQL persistence (the WebhookId search attribute keeps the original).
    """
    base = f"webhook:{partner_id}:{webhook_id}"
    if len(base) > MAX_WORKFLOW_BASE_ID:
        digest = hashlib.sha256(webhook_id.encode()).hexdigest()[:40]
        base = f"webhook:{partner_id}:sha256-{digest}"
    return base if run == 0 else f"{base}:replay-{run}"


def delivery_lane_workflow_id(lane: str) -> str:
    """The workflow id of one delivery lane (deliveries that must go out one at a time)."""
    base = f"delivery:{lane}"
    if len(base) > MAX_WORKFLOW_BASE_ID:
        base = f"delivery:sha256-{hashlib.sha256(lane.encode()).hexdigest()[:40]}"
    return base


INBOX_CHANNEL = "switchboard_inbox"
"""Postgres NOTIFY channel: a webhook entered the inbox or was replayed (the inbox relay
listens)."""

DELIVERIES_CHANNEL = "switchboard_deliveries"
"""Postgres NOTIFY channel: deliveries were planned, replayed or released (the delivery relay
listens)."""

ALERTS_CHANNEL = "switchboard_alerts"
"""Postgres NOTIFY channel: an alert opened or resolved (the alert relay listens)."""


ESCROW_MOVES_CHANNEL = "switchboard_escrow_moves"
"""Postgres NOTIFY channel: an escrow moved (payload: its id), sent as the transition commits
(the api's waits for a funding outcome listen)."""

WORKFLOW_STARTS_CHANNEL = "switchboard_workflow_starts"
"""Postgres NOTIFY channel: a row (an exchange request, an escrow) may lack its workflow (the
workflow starts relay listens)."""


def merchant_channel(merchant_id: str) -> str:
    """The Redis pub/sub channel carrying one merchant's events to the gateway."""
    return f"switchboard:merchant:{merchant_id}"


@dataclass(frozen=True)
class WebhookInput:
    """Starts one :class:`workflows.webhook.WebhookWorkflow`; the body stays in Postgres."""

    event_id: str
    partner_id: str
    webhook_id: str
    event_type: str
    dependency_window_seconds: float


@dataclass(frozen=True)
class ApplyInput:
    """Apply one recorded event; ``park_if_waiting`` dead-letters it if its dependency is absent."""

    event_id: str
    park_if_waiting: bool = False


@dataclass(frozen=True)
class ApplyResult:
    """What applying did, which workflows its effect unblocks, and whether to publish."""

    outcome: Outcome
    publish: bool = False
    wake_workflow_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ParkInput:
    """Dead-letter an event that can never take effect."""

    event_id: str
    reason: str


@dataclass(frozen=True)
class PublishInput:
    """Publish the merchant event that ``event_id`` produced to Redis."""

    event_id: str


@dataclass(frozen=True)
class DeliveryRef:
    """One delivery handed to its lane; ``cycle`` counts operator replays of it."""

    delivery_id: str
    seq: int
    cycle: int
    attempt: int = 0
    """Where in the retry schedule the lane resumes it (after a continue-as-new)."""


@dataclass(frozen=True)
class LaneInput:
    """Starts (or continues) one delivery lane workflow with its retry rules."""

    lane: str
    retry_schedule_seconds: list[float]
    jitter: float
    attempt_timeout_seconds: float
    pending: list[DeliveryRef] = field(default_factory=list)


class Verdict(StrEnum):
    """What one delivery attempt concluded, and so what the lane does next."""

    DELIVERED = "delivered"  # 2xx (or the mail server took the message): done
    FAILED = "failed"  # counts as an attempt: retry on the schedule, or dead-letter
    FINISHED = "finished"  # nothing more to do: already delivered, dead-lettered or cancelled
    HELD = "held"  # the endpoint is paused: handed back until it resumes
    BACK_OFF = "back_off"  # not an attempt: the circuit is open or the endpoint busy; wait
    BLOCKED = "blocked"  # an earlier delivery of the lane must go first


@dataclass(frozen=True)
class AttemptInput:
    """Attempt one delivery now; ``final`` if no retry follows a failure, ``scheduled_at`` when
    the schedule meant it to run. (The attempt log numbers attempts itself.)"""

    delivery_id: str
    cycle: int
    final: bool
    scheduled_at: str


@dataclass(frozen=True)
class AttemptResult:
    """The attempt's verdict, and how long to wait before the next one when it says so."""

    verdict: Verdict
    retry_after_seconds: float | None = None
    detail: str | None = None


# -- on-call -------------------------------------------------------------------------------------


HEALTH_CHECK_ACTIVITY = "check_health"
"""The health monitor's activity name (``activities/monitor.py``)."""
NOTIFY_ACTIVITY = "notify_alert_group"
"""The notification activity's name (``activities/notify.py``), which escalations call."""
ALREADY_DONE = "AlreadyDone"
"""The error ``type`` an escalation's update validator refuses with: already acknowledged or
resolved (the api answers 409)."""


def escalation_workflow_id(group_id: str) -> str:
    """The workflow id of one alert group's escalation."""
    return f"alert-group:{group_id}"


@dataclass(frozen=True)
class EscalationStepPlan:
    """Notify ``channels`` once ``after_seconds`` have passed since the group opened."""

    after_seconds: float
    channels: list[str]


@dataclass(frozen=True)
class EscalationState:
    """Where an escalation stood when its run continued as new (times are ISO strings): the next
    run goes on from here rather than opening the group again."""

    opened: str
    notified: list[str]
    pages: int
    step: int
    next_summary: str
    due: str | None
    acknowledged_by: str | None
    acknowledgement_pending: bool
    cleared: bool
    """An ``alerts_changed`` signal came in that no summary has answered yet."""
    changes_seen: int
    """``alerts_changed`` signals received by every run of this escalation so far."""


@dataclass(frozen=True)
class EscalationInput:
    """Starts one :class:`workflows.escalation.EscalationWorkflow` with its route's plan;
    ``carried`` is set only when a run of it continues as new."""

    group_id: str
    route: str
    group_wait_seconds: float
    repeat_interval_seconds: float
    steps: list[EscalationStepPlan]
    repage_every_seconds: float | None = None
    repage_times: int = 0
    carried: EscalationState | None = None


class NotifyAction(StrEnum):
    """What one notification call does on every channel the group uses."""

    TRIGGER = "trigger"  # post (Slack) / trigger (PagerDuty) for an escalation step
    SUMMARY = "summary"  # new occurrences since the last summary, into the Slack thread
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"


@dataclass(frozen=True)
class NotifyInput:
    """One notification of a group; ``step`` numbers triggers so a retry repeats, not adds."""

    group_id: str
    action: NotifyAction
    channels: list[str]
    at: str
    """The workflow's time (ISO): silences are judged at it, so they follow the workflow's clock."""
    step: int = 0
    actor: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class NotifyResult:
    """``held_until`` (ISO time) when a silence or an inhibiting alert held the trigger back;
    ``open_alerts`` is how many of the group's alerts are still open."""

    held_until: str | None
    open_alerts: int


@dataclass(frozen=True)
class HealthReport:
    """What one health check saw: the dedup keys of the alerts it holds open (it resolved the
    others it owns)."""

    open_alerts: list[str]


# -- exchange requests ---------------------------------------------------------------------------


def exchange_workflow_id(request_id: str) -> str:
    """The workflow id of one exchange request: a business key, so every start is idempotent."""
    return f"exchange-request:{request_id}"


@dataclass(frozen=True)
class ExchangeWorkflowInput:
    """Starts one :class:`workflows.exchange.ExchangeRequestWorkflow` with its SLA settings."""

    request_id: str
    merchant_id: str
    pending_sla_seconds: float
    assigned_timeout_seconds: float


@dataclass(frozen=True)
class ExchangeState:
    """An exchange request as Postgres last held it: ``version`` orders the states (it goes up
    by one per transition); ``age_seconds`` is how long it had been in ``status`` when read
    (so the workflow times it on its own clock, whatever Postgres's says)."""

    status: ExchangeStatus
    version: int
    assignee: str | None
    age_seconds: float = 0.0


@dataclass(frozen=True)
class ExchangeTimerInput:
    """A timer of the request's workflow acting on ``version``: it acts only if the request is
    still at that version (the conditional write), else it reports what it found."""

    request_id: str
    version: int
    after_seconds: float


@dataclass(frozen=True)
class ExchangeTimerResult:
    """What the timer found (after its own write, if any) and whether it acted."""

    state: ExchangeState
    acted: bool


@dataclass(frozen=True)
class ExchangeNoticeInput:
    """Tell the request's customer (and analytics) about ``state``."""

    request_id: str
    state: ExchangeState


# -- escrows -------------------------------------------------------------------------------------


def escrow_workflow_id(escrow_id: str) -> str:
    """The workflow id of one escrow's saga: a business key, so a repeated start is a no-op."""
    return f"escrow:{escrow_id}"


ESCROW_REFUSED = "EscrowRefused"
"""The error ``type`` an escrow's update refuses a release or refund with: the escrow is not in a
state for it (the api answers 409)."""


@dataclass(frozen=True)
class EscrowSource:
    """One wallet funding an escrow, and how much (integer minor units)."""

    wallet_id: str
    amount: int


@dataclass(frozen=True)
class EscrowInput:
    """Starts one :class:`workflows.escrow.EscrowWorkflow`: the escrow as created (its row is
    committed, ``created`` at ``version``), plus the settings the saga needs. ``expires_at`` is
    ISO with zone; exactly one of ``beneficiary_wallet`` and ``beneficiary_account`` is set."""

    escrow_id: str
    merchant_id: str
    currency: str
    amount: int
    sources: list[EscrowSource]
    beneficiary_wallet: str | None
    beneficiary_account: str | None
    reference: str
    expires_at: str
    actor: str
    created_event_id: str
    compensation_alert_seconds: float
    version: int


@dataclass(frozen=True)
class EscrowRequest:
    """An operator's release or refund of an escrow (an update of its workflow)."""

    actor: str
    reason: str | None = None


@dataclass(frozen=True)
class EscrowMoveInput:
    """Move an escrow from ``from_status`` at ``version`` to ``to_status``, audited and
    published; a repeat finding it past that version does nothing."""

    escrow_id: str
    version: int
    from_status: EscrowStatus
    to_status: EscrowStatus
    actor: str
    reason: str | None


@dataclass(frozen=True)
class EscrowSourceInput:
    """One source's debit into the escrow's holding account, or its return (compensation or
    refund); the ledger key derives from the escrow and the wallet."""

    escrow_id: str
    wallet_id: str
    amount: int
    currency: str
    actor: str


@dataclass(frozen=True)
class EscrowSettleInput:
    """Pay the escrow out of its holding account and mark it ``released`` (to its beneficiary
    wallet, or, with ``transfer_id``, out to the provider that already paid the external
    account), or return it to its sources and mark it ``refunded``; ``version`` is the escrow's
    in ``releasing`` or ``refunding``, so a stale attempt of another round moves nothing."""

    escrow_id: str
    version: int
    actor: str
    reason: str | None
    transfer_id: str | None = None


@dataclass(frozen=True)
class EscrowAlertInput:
    """Open (or resolve) the escrow alert of ``kind`` for one escrow."""

    escrow_id: str
    kind: str
    summary: str
    resolve: bool = False
