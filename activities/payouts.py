"""Payout activities: one transfer to an external account at the payout provider.

The transfer is sent with the caller's idempotency key (derived from business identity, never
from the attempt), so every retry asks the provider for the same transfer:

* a 2xx is the transfer (``replayed`` when the provider answered a repeat with the original);
* a timeout, a network error, 409 (the first call is still running), 429 or a 5xx raises a
  retryable error: Temporal retries with the same key, and a transfer that did commit before the
  answer was lost comes back as the original: the account is paid once;
* any other 4xx is a refusal for good: ``ApplicationError(type=PAYOUT_REFUSED,
  non_retryable=True)`` with the provider's ``code`` and ``detail`` as details.

Calls go through the provider's circuit breaker (:mod:`activities.circuit_breaker`, the one
merchant endpoints use, keyed by the provider's base URL): while it is open the activity fails
fast, retryably, without calling the provider.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.circuit_breaker import PROVIDERS, CircuitBreaker
from core.contracts import (
    PAYOUT_REFUSED,
    PAYOUT_TRANSFER_ACTIVITY,
    PayoutTransferInput,
    PayoutTransferResult,
)
from core.settings import Settings

__all__ = ["PAYOUT_UNAVAILABLE", "REPLAYED_HEADER", "PayoutActivities"]

PAYOUT_UNAVAILABLE = "PayoutProviderUnavailable"
"""ApplicationError type of a transfer that may have failed for now (retried, same key)."""
REPLAYED_HEADER = "Idempotent-Replayed"
_MAX_RETRY_AFTER_SECONDS = 300.0


class PayoutActivities:
    """Transfers at the payout provider; its HTTP client and the breaker's Postgres are
    injected."""

    def __init__(self, http: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings) -> None:
        self._http = http
        self._pool = pool
        self._settings = settings
        self._breaker = CircuitBreaker(PROVIDERS, settings)
        self._provider = settings.payout_base_url.rstrip("/")

    @activity.defn(name=PAYOUT_TRANSFER_ACTIVITY)
    async def transfer(self, request: PayoutTransferInput) -> PayoutTransferResult:
        """Ask the provider to pay ``request`` once (see the module docstring)."""
        timeout = self._settings.payout_timeout_seconds
        admission = await self._breaker.admit(self._pool, self._provider, lease_seconds=timeout)
        if not admission.allowed:
            raise _unavailable(
                f"the payout provider's circuit is {admission.reason}", admission.wait_seconds
            )
        try:
            response = await self._http.post(
                f"{self._provider}/v1/transfers",
                json={
                    "account": request.account,
                    "amount": request.amount,
                    "currency": request.currency,
                    "reference": request.reference,
                },
                headers={
                    "Authorization": f"Bearer {self._settings.payout_api_key.get_secret_value()}",
                    "Idempotency-Key": request.idempotency_key,
                },
                timeout=timeout,
            )
        except httpx.TransportError as error:  # timeouts, refused or dropped connections
            await self._breaker.failed(self._pool, self._provider, probe=admission.probe)
            raise _unavailable(f"payout provider: {type(error).__name__}: {error}") from error
        status = response.status_code
        if status >= 500 or status == 429:
            await self._breaker.failed(self._pool, self._provider, probe=admission.probe)
            raise _unavailable(f"payout provider answered {status}", _retry_after(response))
        # Any other answer, a refusal included, comes from a provider that is up.
        await self._breaker.succeeded(self._pool, self._provider)
        if status == 409:  # the first call with this key is still running: "not now", not "no"
            raise _unavailable("payout provider: this transfer is still in progress")
        if status >= 400:
            problem = _problem(response)
            raise ApplicationError(
                f"the payout provider refused the transfer ({status}"
                f" {problem['code']}): {problem['detail']}",
                {"status": status, **problem},
                type=PAYOUT_REFUSED,
                non_retryable=True,
            )
        transfer = response.json()
        replayed = response.headers.get(REPLAYED_HEADER, "").lower() == "true"
        activity.logger.info(
            "payout %s: transfer %s%s",
            request.idempotency_key,
            transfer["id"],
            " (replayed)" if replayed else "",
        )
        return PayoutTransferResult(transfer_id=str(transfer["id"]), replayed=replayed)


def _unavailable(message: str, retry_in: float | None = None) -> ApplicationError:
    return ApplicationError(
        message,
        type=PAYOUT_UNAVAILABLE,
        next_retry_delay=timedelta(seconds=retry_in) if retry_in else None,
    )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if not value.isascii() or not value.isdigit():
        return None
    return min(float(value), _MAX_RETRY_AFTER_SECONDS)


def _problem(response: httpx.Response) -> dict[str, Any]:
    """The refusal's ``code`` and ``detail`` from its RFC 9457 problem (or its text)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return {"code": f"http_{response.status_code}", "detail": response.text[:500]}
    return {
        "code": str(body.get("code") or body.get("type") or f"http_{response.status_code}"),
        "detail": str(body.get("detail") or body.get("title") or ""),
    }
