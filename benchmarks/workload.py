"""What the benchmark partner sends: unique ``payment.succeeded`` webhooks, signed in advance.

Every webhook pays a new payment id, so none waits for another (no ordering retries, no
dependency timers) and each one takes the common path: one ledger transaction, one publish.
Payments are spread over a few merchants, as real traffic would be; each merchant's event
sequence is a row that concurrent webhooks of that merchant take turns on.

Requests are built and signed with :func:`core.signing.sign_headers` before a run starts, so
the sending loop does no JSON or HMAC work; the signatures' timestamps stay well inside the
ingress's 300 s tolerance because every run is shorter than a minute.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from core.signing import sign_headers

__all__ = ["SignedWebhook", "payment_webhooks", "request_wire"]

MERCHANTS = 50


@dataclass(frozen=True)
class SignedWebhook:
    """One signed webhook, ready for either HTTP client."""

    webhook_id: str
    path: str
    headers: dict[str, str]
    body: bytes
    wire: bytes
    """The complete HTTP/1.1 request, for clients that write raw bytes."""


def payment_webhooks(
    partner_id: str,
    secret: str,
    count: int,
    *,
    host: str,
    merchants: int = MERCHANTS,
    merchant_ids: Sequence[str] = (),
) -> list[SignedWebhook]:
    """``count`` signed webhooks of new payments, each with a unique webhook id.

    Payments go round-robin to ``merchant_ids`` if given, else to ``merchant_0`` … ``merchants-1``.
    """
    names = merchant_ids or [f"merchant_{i}" for i in range(merchants)]
    run = uuid.uuid4().hex[:10]
    now = int(time.time())
    path = f"/webhooks/{partner_id}"
    signed = []
    for i in range(count):
        webhook_id = f"msg_{run}_{i}"
        body = _payment(f"pay_{run}_{i}", names[i % len(names)], 100 + i % 50_000)
        headers = {
            "content-type": "application/json",
            **sign_headers(secret, webhook_id, body, now=now),
        }
        signed.append(
            SignedWebhook(webhook_id, path, headers, body, request_wire(host, path, headers, body))
        )
    return signed


def _payment(payment_id: str, merchant_id: str, amount: int) -> bytes:
    data = {
        "merchant_id": merchant_id,
        "payment_id": payment_id,
        "amount": amount,
        "currency": "EUR",
    }
    return json.dumps({"type": "payment.succeeded", "data": data}, separators=(",", ":")).encode()


def request_wire(host: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """A complete HTTP/1.1 POST, for clients that write raw bytes."""
    lines = [f"POST {path} HTTP/1.1", f"host: {host}", f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body
