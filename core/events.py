"""The data each known inbound event type carries, validated once at the ingress.

Money is integer minor units plus an ISO 4217 code, never floats. The same models read the
stored payload back in activities, so the edge and the ledger agree on every field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, ValidationError

from core.contracts import EventType
from core.errors import MalformedEnvelope
from core.formats import EmailAddress, Identifier

__all__ = [
    "EARLIEST_AS_OF",
    "MODELS",
    "BalanceUpdated",
    "EventData",
    "PaymentFailed",
    "PaymentSucceeded",
    "RefundSucceeded",
    "parse_envelope",
]

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
MinorUnits = Annotated[StrictInt, Field(ge=0, le=10**15)]


# Balances report the present; anything before this is a typo or an attack, and years before 1
# or after 9999 in UTC cannot even be stored. The ingress also refuses an ``as_of`` further in the
# future than the signature tolerance (it needs the clock and the setting).
EARLIEST_AS_OF = datetime(2000, 1, 1, tzinfo=UTC)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("as_of needs a timezone")
    if value.year > 9000 or value < EARLIEST_AS_OF:
        raise ValueError(f"as_of must be after {EARLIEST_AS_OF.isoformat()} and not in the future")
    return value


class _EventData(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    merchant_id: Identifier


class PaymentSucceeded(_EventData):
    payment_id: Identifier
    amount: MinorUnits
    currency: Currency
    customer_email: EmailAddress | None = None


class PaymentFailed(_EventData):
    payment_id: Identifier
    amount: MinorUnits
    currency: Currency
    failure_code: Annotated[str, Field(min_length=1, max_length=128)]


class RefundSucceeded(_EventData):
    refund_id: Identifier
    payment_id: Identifier
    amount: Annotated[StrictInt, Field(gt=0, le=10**15)]
    currency: Currency


class BalanceUpdated(_EventData):
    available: Annotated[StrictInt, Field(ge=-(10**15), le=10**15)]
    pending: Annotated[StrictInt, Field(ge=-(10**15), le=10**15)]
    currency: Currency
    as_of: Annotated[datetime, AfterValidator(_aware)]


EventData = PaymentSucceeded | PaymentFailed | RefundSucceeded | BalanceUpdated

MODELS: dict[str, type[EventData]] = {
    EventType.PAYMENT_SUCCEEDED: PaymentSucceeded,
    EventType.PAYMENT_FAILED: PaymentFailed,
    EventType.REFUND_SUCCEEDED: RefundSucceeded,
    EventType.BALANCE_UPDATED: BalanceUpdated,
}


def parse_envelope(envelope: Any) -> tuple[str, dict[str, Any], EventData | None]:
    """Check ``{"type": str, "data": {...}}`` and validate the data of known types.

    Returns ``(type, data, model)``; ``model`` is ``None`` for unknown types, which are stored
    as received. Raises :class:`MalformedEnvelope` naming the first offending field.
    """
    if not isinstance(envelope, dict):
        raise MalformedEnvelope('the body must be a JSON object {"type": ..., "data": {...}}')
    event_type = envelope.get("type")
    data = envelope.get("data")
    if not isinstance(event_type, str) or not 1 <= len(event_type) <= 128:
        raise MalformedEnvelope('"type" must be a string of 1 to 128 characters')
    if not isinstance(data, dict):
        raise MalformedEnvelope('"data" must be a JSON object')
    model = MODELS.get(event_type)
    if model is None:
        return event_type, data, None
    try:
        return event_type, data, model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "data"
        raise MalformedEnvelope(f"data.{where}: {first['msg']}") from None
