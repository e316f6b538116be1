"""Switchboard's one error tree, shared by every process.

* :class:`SwitchboardError` — base of everything we raise on purpose.

  * :class:`IngressError` — a partner's webhook is refused; carries an HTTP status for the
    RFC 9457 problem response.

    * :class:`InvalidSignature` (401) — missing, malformed or non-matching signature headers.
    * :class:`StaleTimestamp` (400) — ``webhook-timestamp`` outside the tolerance, either way.
    * :class:`PayloadTooLarge` (413)
    * :class:`BodyTimeout` (408) — the body did not arrive in time (slow clients).
    * :class:`UnsupportedMediaType` (415)
    * :class:`MalformedEnvelope` (422) — not ``{"type": str, "data": {...}}`` or bad event data.
    * :class:`WebhookIdConflict` (409) — a known ``webhook-id`` arrived with a different body.
    * :class:`RateLimited` (429)
    * :class:`Unavailable` (503) — cannot record durably right now; the partner should retry.

  * :class:`OperatorError` — an operator API request is refused (auth, scope, not found, conflict).

    * :class:`MoneyRefused` — the ledger (:mod:`core.money`) or the idempotency mechanism
      refuses a request; each has its own problem type.

      * :class:`InsufficientFunds` (409) — a debit would take an account below zero.
      * :class:`CurrencyMismatch` (409) — the accounts of a movement hold different currencies.
      * :class:`WalletClosed` (409)
      * :class:`IdempotencyKeyReused` (422) — a key already names a different request or movement.
      * :class:`IdempotencyKeyInUse` (409) — the first request with this key is still running;
        safe to retry.
      * :class:`EscrowMoneyRefused` (409) — an escrow's money cannot move this way at its stage
        (a debit once it has left ``funding``, a return of a debit never made).

    * :class:`EscrowConflict` (409) — an escrow is not in a state for this release or refund.
    * :class:`ExchangeConflict` (409) — an exchange request is not in a state (or not assigned to
      the caller) for this change; names its status and assignee (the winner of a lost claim).
    * :class:`ReplicaUnavailable` (503) — the read replica behind a dashboard read cannot answer
      right now; retry after ``Retry-After``.
    * :class:`WorkflowEngineUnavailable` (503) — Temporal cannot be reached for a change that
      must go through a workflow (an escrow's release or refund); retry after ``Retry-After``.

  * :class:`InvalidDashboardToken` — a dashboard token is missing, malformed, forged, expired or
    not meant for the gateway (the gateway closes with 1008; the api answers 401).
  * :class:`PermanentEventError` — an event can never take effect (raised in activities as a
    non-retryable Temporal ``ApplicationError`` of this type).
  * :class:`DestinationRefused` — an outbound delivery URL or the address it resolves to is not a
    public destination (SSRF guard in :mod:`core.egress`); ``reason`` says which rule refused it.
  * :class:`IllegalTransition` — code tried to move a row to a status its state machine
    (:mod:`core.states`) does not allow from the current one: a bug, never a partner's fault.
"""

from __future__ import annotations

__all__ = [
    "BodyTimeout",
    "CurrencyMismatch",
    "DestinationRefused",
    "EscrowConflict",
    "EscrowMoneyRefused",
    "ExchangeConflict",
    "IdempotencyKeyInUse",
    "IdempotencyKeyReused",
    "IllegalTransition",
    "IngressError",
    "InsufficientFunds",
    "InvalidDashboardToken",
    "InvalidSignature",
    "MalformedEnvelope",
    "MoneyRefused",
    "OperatorError",
    "PayloadTooLarge",
    "PermanentEventError",
    "RateLimited",
    "ReplicaUnavailable",
    "StaleTimestamp",
    "SwitchboardError",
    "Unavailable",
    "UnsupportedMediaType",
    "WalletClosed",
    "WebhookIdConflict",
    "WorkflowEngineUnavailable",
]


class SwitchboardError(Exception):
    """Base class of every error Switchboard raises on purpose."""


class IngressError(SwitchboardError):
    """A webhook refused at the edge, rendered as an RFC 9457 problem."""

    status: int = 400
    title: str = "Bad request"

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after

    @property
    def problem_type(self) -> str:
        """A stable URI reference naming the problem, e.g. ``/problems/invalid-signature``."""
        name = "".join(f"-{c.lower()}" if c.isupper() else c for c in type(self).__name__)
        return f"/problems/{name.lstrip('-')}"


class InvalidSignature(IngressError):
    status, title = 401, "Invalid signature"


class StaleTimestamp(IngressError):
    status, title = 400, "Timestamp outside tolerance"


class PayloadTooLarge(IngressError):
    status, title = 413, "Payload too large"


class BodyTimeout(IngressError):
    status, title = 408, "Request body too slow"


class UnsupportedMediaType(IngressError):
    status, title = 415, "Unsupported media type"


class MalformedEnvelope(IngressError):
    status, title = 422, "Malformed webhook envelope"


class WebhookIdConflict(IngressError):
    status, title = 409, "Webhook id reused with a different body"


class RateLimited(IngressError):
    status, title = 429, "Rate limited"


class Unavailable(IngressError):
    status, title = 503, "Cannot record the webhook durably right now"


class OperatorError(SwitchboardError):
    """An operator API request refused; ``status`` is the HTTP status to answer with, and
    ``retry_after`` (seconds), when set, the ``Retry-After`` to answer it with."""

    retry_after: int | None = None

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    @property
    def problem_type(self) -> str:
        """The problem's ``type``: ``about:blank`` (the status says it all) unless a subclass
        names its own."""
        return "about:blank"


class MoneyRefused(OperatorError):
    """A money movement or money request refused, as a problem of its own type, e.g.
    ``/problems/insufficient-funds`` (the saga will raise these as non-retryable
    ``ApplicationError`` types of the same names)."""

    default_status = 409

    def __init__(self, detail: str) -> None:
        super().__init__(self.default_status, detail)

    @property
    def problem_type(self) -> str:
        name = "".join(f"-{c.lower()}" if c.isupper() else c for c in type(self).__name__)
        return f"/problems/{name.lstrip('-')}"


class InsufficientFunds(MoneyRefused):
    """A debit larger than the account's balance."""


class CurrencyMismatch(MoneyRefused):
    """A movement between accounts of different currencies."""


class WalletClosed(MoneyRefused):
    """A movement from or to a closed wallet."""


class IdempotencyKeyReused(MoneyRefused):
    """An idempotency key sent again with different parameters (or naming another movement)."""

    default_status = 422


class IdempotencyKeyInUse(MoneyRefused):
    """A request repeated while the first with its idempotency key is still running."""


class EscrowMoneyRefused(MoneyRefused):
    """An escrow's money movement its stage does not allow: a debit once the escrow has left
    ``funding``, a return outside compensation or refund or of a debit never made (a stale saga
    step; the saga raises it as a non-retryable ``ApplicationError`` of this type)."""


class EscrowConflict(OperatorError):
    """A release or refund of an escrow that is not ``funded`` (or held in ``release_failed``):
    still funding, failed, already released or refunded, or another request under way."""

    def __init__(self, detail: str) -> None:
        super().__init__(409, detail)

    @property
    def problem_type(self) -> str:
        return "/problems/escrow-conflict"


class ExchangeConflict(OperatorError):
    """An exchange request's change refused by its current state: a claim that lost (``assignee``
    is the winner), an advance by someone other than the assignee, a move from a final status."""

    def __init__(self, detail: str, *, status: str, assignee: str | None) -> None:
        super().__init__(409, detail)
        self.current_status = status
        self.assignee = assignee

    @property
    def problem_type(self) -> str:
        return "/problems/exchange-request-conflict"


class ReplicaUnavailable(OperatorError):
    """The streaming replica that serves the dashboard's reads is down, unreachable or too slow;
    the reads are not moved to the primary (see :class:`core.replica.ReadPool`)."""

    retry_after = 5

    def __init__(self, detail: str) -> None:
        super().__init__(503, detail)

    @property
    def problem_type(self) -> str:
        return "/problems/read-replica-unavailable"


class WorkflowEngineUnavailable(OperatorError):
    """Temporal did not answer a change that only a workflow may make (an escrow's release or
    refund): nothing was changed, the request is safe to retry with the same key."""

    retry_after = 2

    def __init__(self, detail: str) -> None:
        super().__init__(503, detail)

    @property
    def problem_type(self) -> str:
        return "/problems/workflow-engine-unavailable"


class InvalidDashboardToken(SwitchboardError):
    """A dashboard token that must not open a merchant's live feed; the message says why."""


class PermanentEventError(SwitchboardError):
    """An event that can never take effect, whatever the retries."""


class DestinationRefused(SwitchboardError):
    """An outbound destination refused before any connection to it was made.

    ``reason`` is a short stable code: ``"scheme"``, ``"malformed"``, ``"credentials in URL"``,
    ``"fragment"``, ``"port"``, ``"too long"``, ``"private address"``, ``"unresolvable"`` or
    ``"unix socket"``. Every reason but ``"unresolvable"`` is permanent for the URL as written;
    a name that does not resolve may resolve later (DNS outage, a record not yet published).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"destination refused ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


class IllegalTransition(SwitchboardError):
    """A status change its :class:`core.states.Transitions` table does not draw."""
