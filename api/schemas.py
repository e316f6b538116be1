"""Pydantic models at the HTTP edge: operator API requests and every JSON response shape.

They are converted to and from rows here at the edge; workflows and activities never see them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from core.contracts import EscrowStatus
from core.formats import EmailAddress, Identifier, PartnerId
from core.replica import Freshness

__all__ = [
    "AccountBeneficiary",
    "Alert",
    "AlertGroup",
    "AlertResolution",
    "ApiKeyCreated",
    "ApiKeyIn",
    "ApiKeyOut",
    "Beneficiary",
    "DeadLetter",
    "DeliveryAttemptOut",
    "DeliveryOut",
    "DeliveryReplayFilter",
    "EndpointCreated",
    "EndpointIn",
    "EndpointOut",
    "EndpointPatch",
    "EndpointSecretRotated",
    "EscrowIn",
    "EscrowList",
    "EscrowOut",
    "EscrowRequestIn",
    "EscrowSourceIn",
    "EscrowSourceOut",
    "EscrowTransition",
    "EventOut",
    "FreshRead",
    "IsoDateTime",
    "LedgerTransactionOut",
    "Merchant",
    "MerchantIn",
    "MerchantPatch",
    "PartnerCreated",
    "PartnerIn",
    "PartnerLinked",
    "PartnerOut",
    "PartnerPatch",
    "PostingOut",
    "Problem",
    "ProblemIssue",
    "ReplayFilter",
    "ReplayResult",
    "SecretRotated",
    "Silence",
    "SilenceIn",
    "Statement",
    "StatementEntry",
    "Stats",
    "TimelineEntry",
    "TopUpIn",
    "TraceStep",
    "TransferIn",
    "WalletBeneficiary",
    "WalletIn",
    "WalletOut",
    "WebhookAccepted",
    "WebhookTrace",
]


def _json_number(value: object) -> object:
    # Lax pydantic takes "5" and true for numbers; JSON Schema says they are not. An integral
    # float (5.0) is a JSON Schema integer, so it stays accepted.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON number")
    return value


def _iso_datetime(value: object) -> object:
    # Lax pydantic reads a number, or a string of digits, as Unix seconds; the document says
    # RFC 3339 date-time, so only that (or a datetime, from Python) is taken.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or _RFC3339_DATE.match(value) is None:
        raise ValueError("must be an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z")
    return value


_RFC3339_DATE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")
# After the constraints, so that the document shows them as JSON Schema keywords.
JSON_NUMBER = BeforeValidator(_json_number)
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_datetime)]
"""A date-time in a query or body: RFC 3339 text only, never Unix seconds."""


class ProblemIssue(BaseModel):
    loc: list[str | int] = Field(description="Where the invalid value is, e.g. query, since.")
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem: every error the api answers, as ``application/problem+json``."""

    type: str = Field("about:blank", description="A URI naming the kind of problem.")
    title: str = Field(description="The status's short summary, the same for every occurrence.")
    status: Annotated[int, Field(ge=400, le=599)]
    detail: str = Field(description="What went wrong with this request.")
    errors: list[ProblemIssue] = Field(
        default_factory=list, description="Each invalid value, on a 422 for an invalid request."
    )


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")]
    scopes: Annotated[list[Literal["read", "replay", "admin"]], Field(min_length=1, max_length=3)]


class ApiKeyCreated(BaseModel):
    id: int
    name: str
    scopes: list[str]
    key: str = Field(description="The key; shown once, stored only as a hash.")


class ApiKeyOut(BaseModel):
    id: int
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class WebhookAccepted(BaseModel):
    event_id: str
    trace_url: str
    duplicate: bool


class PartnerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: PartnerId
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    rate_limit_per_second: Annotated[int, Field(gt=0, le=1_000_000), JSON_NUMBER] | None = None
    auto_onboard_merchants: StrictBool = Field(
        False,
        description="Let this partner's webhooks create and link merchants never seen before. "
        "Off by default: merchants are then created and linked by an operator.",
    )


class PartnerPatch(BaseModel):
    """Only the fields sent are changed; ``rate_limit_per_second: null`` restores the default."""

    model_config = ConfigDict(extra="forbid")

    # Absent means unchanged; only the rate limit can be cleared, so only it is nullable.
    name: Annotated[str, Field(min_length=1, max_length=200)] | SkipJsonSchema[None] = None
    rate_limit_per_second: Annotated[int, Field(gt=0, le=1_000_000), JSON_NUMBER] | None = None
    auto_onboard_merchants: StrictBool | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _only_the_rate_limit_clears(self) -> PartnerPatch:
        for name in ("name", "auto_onboard_merchants"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class PartnerCreated(BaseModel):
    id: str
    secret: str = Field(description="The whsec_ signing secret; shown once.")


class PartnerOut(BaseModel):
    id: str
    name: str
    rate_limit_per_second: int | None
    auto_onboard_merchants: bool
    live_secrets: int
    created_at: datetime


class SecretRotated(BaseModel):
    partner_id: str
    secret: str
    previous_secrets_expire_at: datetime | None


MerchantName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]


class MerchantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Identifier
    name: MerchantName | None = None
    email: EmailAddress | None = Field(None, description="Where sale notices go.")
    partners: Annotated[list[PartnerId], Field(max_length=100)] = Field(
        default_factory=list, description="Partners that process for this merchant (linked)."
    )


class MerchantPatch(BaseModel):
    """Only the fields sent are changed; ``null`` clears one."""

    model_config = ConfigDict(extra="forbid")

    name: MerchantName | None = None
    email: EmailAddress | None = None


class Merchant(BaseModel):
    id: str
    name: str | None
    email: str | None
    last_seq: int
    partners: list[str] = Field(default_factory=list, description="Linked partners.")
    balances: list[dict[str, Any]] = Field(
        default_factory=list, description="Balances each partner reports, by currency."
    )
    created_at: datetime


class PartnerLinked(BaseModel):
    merchant_id: str
    partner_id: str
    created: bool = Field(description="False if the link already existed.")
    replayed: list[str] = Field(
        description="Event ids of this partner's webhooks for this merchant that were parked "
        "for lack of the link and now run again."
    )


class TraceStep(BaseModel):
    step: str
    at: datetime
    detail: str | None = None


class WebhookTrace(BaseModel):
    event_id: str
    partner_id: str
    webhook_id: str
    type: str
    merchant_id: str | None
    entity_key: str | None
    status: str
    detail: str | None
    workflow_id: str | None
    workflow_url: str | None
    steps: list[TraceStep]
    merchant_event: dict[str, Any] | None
    payload: dict[str, Any]


class EventOut(BaseModel):
    merchant_id: str
    seq: int
    event_id: str
    type: str
    data: dict[str, Any]
    created_at: datetime


class DeadLetter(BaseModel):
    event_id: str
    partner_id: str
    webhook_id: str
    type: str
    reason: str
    created_at: datetime
    replay_count: int
    trace_url: str


class ReplayFilter(BaseModel):
    partner_id: str | None = None
    since: IsoDateTime | None = None
    until: IsoDateTime | None = None
    dry_run: StrictBool = Field(True, description="Count what would be replayed, change nothing.")
    limit: Annotated[int, Field(gt=0, le=10_000), JSON_NUMBER] = 1000


class ReplayResult(BaseModel):
    matched: int
    replayed: int
    dry_run: bool
    event_ids: list[str]


class Alert(BaseModel):
    id: int
    dedup_key: str
    kind: str
    severity: str
    summary: str
    status: str
    occurrences: int
    created_at: datetime
    last_seen_at: datetime
    group_id: str | None = Field(
        None, description="Its alert group (one escalation); none until the worker routed it."
    )
    event_id: str | None = Field(
        None, description="The webhook it is about, if any (its trace: ``/v1/webhooks/{id}``)."
    )


class TimelineEntry(BaseModel):
    at: datetime
    action: str = Field(description="opened, grouped, held, notified, acknowledged, resolved")
    channel: str | None
    actor: str
    detail: str | None


class AlertGroup(BaseModel):
    id: str
    route: str
    kind: str
    severity: str
    summary: str
    status: Literal["open", "acknowledged", "resolved"]
    pages: int = Field(description="PagerDuty triggers sent (escalation steps and re-pages).")
    opened_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    workflow_url: str | None
    alerts: list[Alert]
    timeline: list[TimelineEntry]


class AlertResolution(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=1, max_length=500)] = "resolved by an operator"


class SilenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    matchers: Annotated[
        dict[
            Annotated[str, Field(min_length=1, max_length=64)],
            Annotated[str, Field(max_length=256)],
        ],
        Field(min_length=1, max_length=20),
    ] = Field(
        description="Label matchers (kind, severity, partner_id, …); a trailing * matches a prefix."
    )
    duration_seconds: Annotated[int, Field(gt=0, le=30 * 86400)] = Field(
        description="How long the silence lasts from ``starts_at``."
    )
    starts_at: IsoDateTime | None = Field(None, description="Default: now.")
    comment: Annotated[str, Field(min_length=1, max_length=500)]


class Silence(BaseModel):
    id: int
    matchers: dict[str, str]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    created_at: datetime


class Stats(BaseModel):
    inbox_depth: int = Field(description="Recorded webhooks whose workflow is not started yet.")
    by_status: dict[str, int]
    open_alerts: int
    dead_letters: int


EndpointUrl = Annotated[
    str,
    Field(
        min_length=1,
        max_length=2048,
        pattern=r"^https?://",
        description="Where deliveries go; it must also pass the delivery network policy "
        "(no private or loopback addresses unless allowed), or the request is refused (422).",
    ),
]


class EndpointIn(BaseModel):
    merchant_id: Identifier
    url: EndpointUrl
    description: Annotated[str, Field(max_length=500)] = ""
    event_types: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        None, description="Event types to receive; omit for all."
    )


class EndpointPatch(BaseModel):
    url: EndpointUrl | None = None
    description: Annotated[str, Field(max_length=500)] | None = None
    event_types: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = None


class EndpointOut(BaseModel):
    id: str
    merchant_id: str
    url: str
    description: str
    event_types: list[str] | None
    status: Literal["active", "paused", "disabled", "deleted"]
    status_reason: str | None
    consecutive_failures: int
    failing_since: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    circuit_open_until: datetime | None
    deliveries: dict[str, int] = Field(default_factory=dict, description="Deliveries by status.")
    created_at: datetime


class EndpointCreated(EndpointOut):
    secret: str = Field(description="The endpoint's whsec_ signing secret (shown once).")


class EndpointSecretRotated(BaseModel):
    endpoint_id: str
    secret: str
    previous_secrets_expire_at: datetime | None


class DeliveryAttemptOut(BaseModel):
    delivery_id: str
    endpoint_id: str | None
    attempt: int
    cycle: int
    scheduled_at: datetime
    started_at: datetime
    latency_ms: float
    outcome: str
    status_code: int | None
    error: str | None
    response_sha256: str | None
    response_head: str | None


class DeliveryOut(BaseModel):
    id: str = Field(description="The webhook-id: the same on every attempt and replay.")
    event_id: str | None = Field(description="None for an operational notice to the merchant.")
    merchant_id: str
    seq: int
    channel: Literal["webhook", "email"]
    endpoint_id: str | None
    recipient: str | None
    template: str | None
    status: Literal["pending", "succeeded", "dead_lettered", "cancelled"]
    attempts: int
    cycle: int
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None
    attempt_log: list[DeliveryAttemptOut] = []


class DeliveryReplayFilter(BaseModel):
    endpoint_id: str | None = None
    since: IsoDateTime | None = None
    until: IsoDateTime | None = None
    dry_run: StrictBool = Field(True, description="Count what would be replayed, change nothing.")
    limit: Annotated[int, Field(gt=0, le=10_000), JSON_NUMBER] = 1000
    rate_per_second: Annotated[float, Field(gt=0, le=1000), JSON_NUMBER] = Field(
        10.0, description="Replayed deliveries are released at most this fast."
    )


# -- wallets and the ledger --------------------------------------------------------------------

WalletId = Annotated[
    str, Field(pattern=r"^wal_[0-9a-f]{32}$", description="A wallet id: wal_ and 32 hex digits.")
]
Currency = Annotated[
    str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. EUR.", examples=["EUR"])
]
MinorUnits = Annotated[
    int,
    Field(gt=0, le=10**15, description="Integer minor units (cents), never a float."),
    JSON_NUMBER,
]


class WalletIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    merchant_id: Identifier = Field(description="The owner: a merchant that exists.")
    currency: Currency


class WalletOut(BaseModel):
    id: str
    merchant_id: str
    currency: str
    status: Literal["open", "closed"]
    balance: int = Field(description="Integer minor units; the sum of the wallet's postings.")
    created_at: datetime


class TopUpIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: MinorUnits


class TransferIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_wallet: WalletId
    to_wallet: WalletId
    amount: MinorUnits


class PostingOut(BaseModel):
    account_id: str = Field(description="A wallet id, or world:{currency} for outside money.")
    amount: int = Field(description="Minor units: positive credits, negative debits.")
    balance_after: int | None = Field(
        description="The account's balance after this posting; null on world:{currency}, which"
        " keeps no balance (its postings sum to minus what the other accounts hold)."
    )


class LedgerTransactionOut(BaseModel):
    """One posted movement; its postings sum to zero."""

    id: int
    idempotency_key: str = Field(description="The ledger key: request:{Idempotency-Key}.")
    kind: str = Field(description="top_up or transfer (escrow kinds later).")
    currency: str
    amount: int
    postings: list[PostingOut]
    actor: str
    created_at: datetime


class StatementEntry(BaseModel):
    posting_id: int = Field(description="Pass the last one as ``after`` for the next page.")
    transaction_id: int
    idempotency_key: str
    kind: str
    amount: int = Field(description="Minor units: positive credits, negative debits.")
    balance_after: int
    counterparties: list[str]
    actor: str
    created_at: datetime


class Statement(BaseModel):
    wallet: WalletOut
    entries: list[StatementEntry] = Field(description="Oldest first, after ``after``.")
    has_more: bool


class FreshRead(BaseModel):
    """An answer read from the dashboard's read pool (``SWITCHBOARD_DATABASE_READ_URL``), saying
    how fresh it is, so a page can show "data as of …" while a replica lags."""

    read_from: Literal["primary", "replica"] = Field(description="Which database answered.")
    as_of: datetime | None = Field(
        description="Everything committed up to this instant is in the answer (a lower bound);"
        " null if a lagging replica cannot tell yet."
    )
    replica_lag_seconds: float | None = Field(
        description="How far as_of is behind now: 0 on the primary or a caught-up replica (an"
        " upper bound while it lags); null when as_of is."
    )

    @classmethod
    def freshness_of(cls, fresh: Freshness) -> dict[str, Any]:
        """The fields of this model for ``fresh``."""
        return {
            "read_from": fresh.read_from,
            "as_of": fresh.as_of,
            "replica_lag_seconds": fresh.lag_seconds,
        }


# -- escrows -------------------------------------------------------------------------------------


class EscrowSourceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wallet_id: WalletId = Field(description="A wallet of the escrow's merchant, in its currency.")
    amount: MinorUnits


class WalletBeneficiary(BaseModel):
    """An escrow released to one of Switchboard's wallets."""

    model_config = ConfigDict(extra="forbid")

    wallet_id: WalletId


class AccountBeneficiary(BaseModel):
    """An escrow released to an external account, paid through the payout provider."""

    model_config = ConfigDict(extra="forbid")

    account: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")] = Field(
        description="The payout provider's id of an external account."
    )


Beneficiary: TypeAlias = WalletBeneficiary | AccountBeneficiary
"""Who an escrow is released to: exactly one of a wallet or an external account (the schema
says so, so a body naming neither or both is refused by its shape)."""


class EscrowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    merchant_id: Identifier = Field(description="The owner, whose wallets fund the escrow.")
    currency: Currency
    sources: list[EscrowSourceIn] = Field(min_length=1, max_length=20)
    beneficiary: Beneficiary
    expires_at: AwareDatetime = Field(
        description="When an escrow nobody released is refunded to its sources; in the"
        " future (a 422 otherwise)."
    )
    reference: str = Field(
        min_length=1, max_length=200, description="E.g. the giveaway or gift card it is for."
    )


class EscrowRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=500, description="Recorded in the audit log.")


class EscrowSourceOut(BaseModel):
    wallet_id: str
    amount: int
    debited: bool = Field(description="Its debit into the escrow is posted.")
    returned: bool = Field(description="Its debit was returned (failed funding, or a refund).")


class EscrowTransition(BaseModel):
    from_status: EscrowStatus | None
    to_status: EscrowStatus
    actor: str
    reason: str | None
    at: datetime
    event_id: str | None = Field(description="The merchant event that published it.")


class EscrowOut(BaseModel):
    """An escrow, its sources and its transitions (audit log, oldest first)."""

    id: str
    merchant_id: str
    currency: str
    amount: int = Field(description="Integer minor units: the sum of the sources.")
    sources: list[EscrowSourceOut]
    beneficiary: Beneficiary
    reference: str
    expires_at: datetime
    status: EscrowStatus
    payout_transfer_id: str | None = Field(description="The provider's transfer, once paid.")
    created_by: str
    created_at: datetime
    updated_at: datetime
    transitions: list[EscrowTransition]


class EscrowList(BaseModel):
    escrows: list[EscrowOut] = Field(description="Newest first; without sources or transitions.")
