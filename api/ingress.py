"""Partner ingress: ``POST /webhooks/{partner_id}``.

In order: JSON media type (415), body size capped while reading (413) and given
``body_timeout_seconds`` to arrive (408; both enforced by :mod:`api.limits` for every route),
Standard Webhooks signature (401, also for an unknown
partner, so that partner ids cannot be probed; 400 for a stale timestamp), per-partner rate
limit (429), envelope and event data (422), then a durable inbox write (202, or 200 for a
repeat, 409 for a reused id with another body, 503 if Postgres cannot take it). Nothing here
talks to Temporal: the relay in the worker starts the workflows, so Temporal being slow or down
never delays an ack.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse

from api.inbox import Inbox, InboxEntry, new_event_id
from api.partners import PartnerDirectory
from api.problems import problems
from api.ratelimit import RateLimiter
from api.schemas import WebhookAccepted
from core.contracts import entity_key, priority_of
from core.errors import (
    IngressError,
    MalformedEnvelope,
    RateLimited,
    UnsupportedMediaType,
)
from core.events import MODELS, BalanceUpdated, parse_envelope
from core.metrics import ACK_LATENCY, WEBHOOKS_RECEIVED
from core.settings import Settings
from core.signing import MAX_ID_LENGTH, MAX_SIGNATURE_HEADER_LENGTH, MAX_TIMESTAMP_DIGITS, verify

__all__ = ["Ingress", "router"]

router = APIRouter(tags=["ingress"])
_NOBODYS_KEY = (secrets.token_bytes(32),)
log = logging.getLogger("switchboard.ingress")


@dataclass
class Ingress:
    """Everything the ingress route needs, built once by the app's lifespan."""

    settings: Settings
    partners: PartnerDirectory
    inbox: Inbox
    limiter: RateLimiter

    async def accept(self, partner_id: str, request: Request) -> tuple[int, WebhookAccepted]:
        received_at = datetime.now(UTC)
        # An unknown partner is answered exactly like a known one with a bad signature (the
        # body is read and checked against a key nobody has), so ids cannot be enumerated.
        partner = await self.partners.get(partner_id)
        if not _is_json(request.headers.get("content-type", "")):
            raise UnsupportedMediaType("send the webhook as application/json")
        # Capped while it streams and given body_timeout_seconds by api.limits (413, 408).
        body = await request.body()
        now = time.time()
        verified = verify(
            partner.keys if partner else _NOBODYS_KEY,
            request.headers,
            body,
            now=now,
            tolerance=self.settings.signature_tolerance_seconds,
        )
        assert partner is not None  # nobody can sign with _NOBODYS_KEY
        limit = partner.rate_limit_per_second or self.settings.partner_rate_limit_per_second
        if not await self.limiter.allow(f"partner:{partner.id}", limit):
            raise RateLimited(f"more than {limit} webhooks/s from {partner.id}", retry_after=1)
        event_type, data, model = parse_envelope(_json(body))
        if isinstance(model, BalanceUpdated):
            _refuse_future_as_of(model, now + self.settings.signature_tolerance_seconds)
        recorded = await self.inbox.record(
            InboxEntry(
                event_id=new_event_id(),
                partner_id=partner.id,
                webhook_id=verified.webhook_id,
                body=body,
                event_type=event_type,
                entity_key=entity_key(event_type, data) if model else None,
                merchant_id=model.merchant_id if model else _text(data.get("merchant_id")),
                priority=priority_of(event_type),
                payload_json=_storable_json({"type": event_type, "data": data}),
                received_at=received_at,
            )
        )
        log.info(
            "webhook %s from %s recorded as %s",
            verified.webhook_id,
            partner.id,
            recorded.event_id,
            extra={
                "event_id": recorded.event_id,
                "partner_id": partner.id,
                "webhook_id": verified.webhook_id,
                "duplicate": recorded.duplicate,
            },
        )
        trace_url = f"{self.settings.public_base_url}/v1/webhooks/{recorded.event_id}"
        status = 200 if recorded.duplicate else 202
        return status, WebhookAccepted(
            event_id=recorded.event_id, trace_url=trace_url, duplicate=recorded.duplicate
        )


# Dependencies are async on purpose: FastAPI runs plain ``def`` dependencies in a thread pool.
async def get_ingress(request: Request) -> Ingress:
    ingress: Ingress = request.app.state.ingress
    return ingress


def _header(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": True,
        "description": description,
        "schema": {"type": "string", **schema},
    }


def _describe_known_data() -> str:
    """What the data of each known event type must hold (the models validate it; the schema
    states no more than "an object", since an unknown type's data is recorded as received)."""
    lines = []
    for event_type, model in MODELS.items():
        fields = model.model_fields
        required = [name for name, field in fields.items() if field.is_required()]
        optional = [name for name, field in fields.items() if not field.is_required()]
        also = f" (optional: {', '.join(optional)})" if optional else ""
        lines.append(f"`{event_type}`: {', '.join(required)}{also}")
    return (
        "The event's data. Known types require these fields (422 naming the first one wrong);"
        " money is integer minor units with an ISO 4217 currency: " + "; ".join(lines) + "."
    )


_DATA_DESCRIPTION = _describe_known_data()

# The route reads the raw body (the signature covers its exact bytes), so FastAPI cannot infer
# the body and headers it takes: they are declared here.
_SIGNED_REQUEST: dict[str, Any] = {
    "parameters": [
        _header(
            "webhook-id",
            "The webhook's id; a repeat with the same body is answered 200, not recorded again.",
            {"minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": "^[!-~]+$"},
        ),
        _header(
            "webhook-timestamp",
            "Unix seconds when it was signed; must be within the tolerance of our clock.",
            {"pattern": f"^[0-9]{{1,{MAX_TIMESTAMP_DIGITS}}}$"},
        ),
        _header(
            "webhook-signature",
            "Space-separated `v1,<base64 HMAC-SHA256>` signatures of `id.timestamp.body`.",
            {"minLength": 1, "maxLength": MAX_SIGNATURE_HEADER_LENGTH},
        ),
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "title": "WebhookEnvelope",
                    "type": "object",
                    "required": ["type", "data"],
                    "properties": {
                        "type": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 128,
                            "description": "The event type, e.g. payment.succeeded; known types "
                            "have their data validated, others are recorded as received.",
                        },
                        "data": {"type": "object", "description": _DATA_DESCRIPTION},
                    },
                }
            }
        },
    },
}


@router.post(
    "/webhooks/{partner_id}",
    status_code=202,
    response_model=WebhookAccepted,
    summary="Receive a partner webhook (Standard Webhooks signed)",
    responses={
        200: {"model": WebhookAccepted, "description": "A repeat of a recorded webhook."},
        **problems(
            400,
            401,
            408,
            409,
            413,
            415,
            422,
            429,
            431,
            503,
            why={
                400: "Timestamp outside the tolerance.",
                401: "Missing or invalid signature, or an unknown partner.",
                409: "webhook-id reused with a different body.",
                422: "Malformed envelope or event data.",
                503: "Cannot record durably right now; see Retry-After.",
            },
        ),
    },
    openapi_extra=_SIGNED_REQUEST,
)
async def receive_webhook(
    request: Request,
    ingress: Annotated[Ingress, Depends(get_ingress)],
    partner_id: Annotated[str, Path(max_length=64)],
) -> JSONResponse:
    """Verify, deduplicate and durably record a webhook; its workflow starts shortly after."""
    started = time.perf_counter()
    try:
        status, accepted = await ingress.accept(partner_id, request)
    except IngressError as error:
        WEBHOOKS_RECEIVED.labels(str(error.status)).inc()
        raise
    finally:
        ACK_LATENCY.observe(time.perf_counter() - started)
    WEBHOOKS_RECEIVED.labels(str(status)).inc()
    return JSONResponse(accepted.model_dump(), status_code=status)


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _json(body: bytes) -> Any:
    """The body as JSON, which Standard Webhooks signs as UTF-8 text: no other encoding, no BOM.

    (``json.loads`` on bytes would quietly accept UTF-16 and UTF-32 and skip a BOM.)
    """
    if body.startswith(b"\xef\xbb\xbf"):
        raise MalformedEnvelope("the body starts with a byte-order mark; send plain UTF-8 JSON")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEnvelope("the body is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        raise MalformedEnvelope("the body is not valid JSON") from None


def _refuse_future_as_of(balance: BalanceUpdated, latest: float) -> None:
    # A far-future as_of would win last-writer-wins forever and freeze the balance.
    if balance.as_of.timestamp() > latest:
        raise MalformedEnvelope("data.as_of: is further in the future than the clock tolerance")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses to inf, which Postgres jsonb (like JSON itself) cannot hold.
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range")
    return number


_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _storable_json(envelope: dict[str, Any]) -> str:
    """The envelope as JSON that Postgres ``jsonb`` accepts (no NUL, no lone surrogates)."""
    text = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedEnvelope("the body contains an unpaired UTF-16 surrogate") from None
    if _NUL_ESCAPE.search(text):
        raise MalformedEnvelope("the body contains a NUL character (\\u0000)")
    return text


def _text(value: object) -> str | None:
    return value[:128] if isinstance(value, str) and value else None
