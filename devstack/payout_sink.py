"""The development payout provider: a real HTTP server that pays external accounts the way a
payment provider's transfer API does, keeps its own balances, and misbehaves on request.

* ``POST /v1/transfers`` (bearer API key; JSON ``account``, ``amount`` in integer minor units,
  ``currency``, ``reference``; an ``Idempotency-Key`` header is required) commits a transfer:
  201 with ``{id, account, amount, currency, reference, status}``. A repeat of the key with the
  same parameters returns the original transfer (200, ``Idempotent-Replayed: true``, as Stripe
  does); the same key with different parameters is a 422 problem (``idempotency_key_reused``).
* ``GET /v1/transfers`` lists transfers (``?idempotency_key=`` filters);
  ``GET /v1/accounts/{account}`` shows an account's balances and status.
* Errors are RFC 9457 problems with a ``code``: 401 ``unauthorized``, 400 ``invalid_request``,
  422 ``idempotency_key_reused`` or the refusal's code (``account_closed`` by default).

``switchboard dev`` runs it (``SWITCHBOARD_PAYOUT_SINK_PORT``, 58028) and points
``SWITCHBOARD_PAYOUT_BASE_URL`` at it; the tests use it as their provider. ``POST /_faults``
(or the :class:`PayoutSink` methods) makes it misbehave: ``{"mode": "fail", "times": 3}`` answers
the next transfer calls 503 without committing; ``{"mode": "timeout_after_commit", "times": 1,
"hold_seconds": 30}`` commits, then holds the answer until the client gives up (or the hold
ends); ``{"mode": "refuse", "account": "acct_x", "code": "account_closed"}`` refuses an account for
good. ``DELETE /_faults`` clears them; ``GET /_calls`` shows every transfer call and its answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.settings import DEV_PAYOUT_API_KEY
from devstack.threaded import ThreadedServer

__all__ = ["PayoutSink", "PayoutSinkState"]

REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
_CURRENCY = re.compile(r"[A-Z]{3}")
# A held answer checks this often whether its client has given up.
_HOLD_POLL_SECONDS = 0.05


@dataclass
class PayoutSinkState:
    """The provider's books (transfers, balances) and how it is told to misbehave."""

    api_key: str = DEV_PAYOUT_API_KEY
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    balances: dict[str, dict[str, int]] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0
    fail_status: int = 503
    time_out_next: int = 0
    hold_seconds: float = 30.0
    refused: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_failure(self) -> int | None:
        """The status to fail this call with, if failures are armed."""
        with self.lock:
            if self.fail_next <= 0:
                return None
            self.fail_next -= 1
            return self.fail_status

    def take_timeout(self) -> float | None:
        """How long to hold this committed call's answer, if timeouts are armed."""
        with self.lock:
            if self.time_out_next <= 0:
                return None
            self.time_out_next -= 1
            return self.hold_seconds

    def commit(
        self, key: str, params: dict[str, Any]
    ) -> tuple[dict[str, Any], bool] | dict[str, Any]:
        """Commit a transfer for ``key`` once: ``(transfer, replayed)``, or a problem."""
        with self.lock:
            if (existing := self.by_key.get(key)) is not None:
                transfer = self.transfers[existing]
                if {name: transfer[name] for name in params} != params:
                    return _problem(
                        422,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used with different parameters",
                    )
                return dict(transfer), True
            if (code := self.refused.get(params["account"])) is not None:
                return _problem(422, code, f"account {params['account']} cannot receive payouts")
            transfer = {
                "id": f"tr_{uuid.uuid4().hex[:20]}",
                **params,
                "status": "paid",
                "idempotency_key": key,
                "created_at": time.time(),
            }
            self.transfers[transfer["id"]] = transfer
            self.by_key[key] = transfer["id"]
            account = self.balances.setdefault(params["account"], {})
            account[params["currency"]] = account.get(params["currency"], 0) + params["amount"]
            return dict(transfer), False

    def record(self, key: str | None, status: int, body: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append(
                {"idempotency_key": key, "status": status, "at": time.time(), "body": body}
            )


def _problem(status: int, code: str, detail: str) -> dict[str, Any]:
    return {
        "type": f"https://payouts.sink.localhost/problems/{code}",
        "title": code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": code,
    }


def _problem_response(problem: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(problem, problem["status"], headers, media_type="application/problem+json")


def _transfer_params(body: Any) -> dict[str, Any] | str:
    """The transfer's parameters, or why the body is not a valid transfer request."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    account, amount, currency = body.get("account"), body.get("amount"), body.get("currency")
    reference = body.get("reference", "")
    if not isinstance(account, str) or not account or len(account) > 255:
        return "'account' must be a non-empty string"
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        return "'amount' must be a positive integer (minor units)"
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        return "'currency' must be an ISO 4217 code"
    if not isinstance(reference, str) or len(reference) > 500:
        return "'reference' must be a string of at most 500 characters"
    return {"account": account, "amount": amount, "currency": currency, "reference": reference}


def _public(transfer: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in transfer.items() if name != "created_at"}


def _app(state: PayoutSinkState) -> Starlette:
    def authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {state.api_key}"

    async def create_transfer(request: Request) -> Response:
        key = request.headers.get("idempotency-key")
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        recorded = body if isinstance(body, dict) else {}
        if not authorized(request):
            state.record(key, 401, recorded)
            return _problem_response(_problem(401, "unauthorized", "invalid API key"))
        if (status := state.take_failure()) is not None:
            state.record(key, status, recorded)
            problem = _problem(status, "unavailable", "the provider is unavailable; retry")
            return _problem_response(problem, {"Retry-After": "0"})
        params = _transfer_params(body)
        if not key or len(key) > MAX_KEY_LENGTH:
            params = f"an Idempotency-Key header of at most {MAX_KEY_LENGTH} characters is required"
        if isinstance(params, str):
            state.record(key, 400, recorded)
            return _problem_response(_problem(400, "invalid_request", params))
        assert key is not None
        outcome = state.commit(key, params)
        if isinstance(outcome, dict):
            state.record(key, outcome["status"], recorded)
            return _problem_response(outcome)
        transfer, replayed = outcome
        status = 200 if replayed else 201
        state.record(key, status, recorded)
        if not replayed and (hold := state.take_timeout()) is not None:
            await _hold(request, hold)
        headers = {REPLAYED_HEADER: "true"} if replayed else {}
        return JSONResponse(_public(transfer), status, headers)

    async def list_transfers(request: Request) -> Response:
        if not authorized(request):
            return _problem_response(_problem(401, "unauthorized", "invalid API key"))
        key = request.query_params.get("idempotency_key")
        with state.lock:
            found = [
                _public(t)
                for t in state.transfers.values()
                if key is None or t["idempotency_key"] == key
            ]
        return JSONResponse({"data": found})

    async def account(request: Request) -> Response:
        if not authorized(request):
            return _problem_response(_problem(401, "unauthorized", "invalid API key"))
        name = request.path_params["account"]
        with state.lock:
            balances = dict(state.balances.get(name, {}))
            closed = name in state.refused
        return JSONResponse(
            {"account": name, "status": "closed" if closed else "open", "balances": balances}
        )

    async def faults(request: Request) -> Response:
        if request.method == "DELETE":
            clear_faults(state)
            return JSONResponse({"cleared": True})
        body = await request.json()
        mode = body.get("mode")
        if mode == "fail":
            arm_failures(state, int(body.get("times", 1)), int(body.get("status", 503)))
        elif mode == "timeout_after_commit":
            arm_timeouts(state, int(body.get("times", 1)), float(body.get("hold_seconds", 30)))
        elif mode == "refuse" and isinstance(body.get("account"), str):
            refuse(state, body["account"], str(body.get("code", "account_closed")))
        else:
            problem = _problem(
                400, "invalid_request", "mode is fail, timeout_after_commit or refuse (account)"
            )
            return _problem_response(problem)
        return JSONResponse({"armed": body})

    async def calls(_: Request) -> Response:
        with state.lock:
            return JSONResponse(list(state.calls))

    return Starlette(
        routes=[
            Route("/v1/transfers", create_transfer, methods=["POST"]),
            Route("/v1/transfers", list_transfers, methods=["GET"]),
            Route("/v1/accounts/{account}", account),
            Route("/_faults", faults, methods=["POST", "DELETE"]),
            Route("/_calls", calls),
        ]
    )


async def _hold(request: Request, seconds: float) -> None:
    """Hold a committed answer for ``seconds``, or until the client has given up on it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not await request.is_disconnected():
        await asyncio.sleep(_HOLD_POLL_SECONDS)


def arm_failures(state: PayoutSinkState, times: int, status: int = 503) -> None:
    with state.lock:
        state.fail_next, state.fail_status = times, status


def arm_timeouts(state: PayoutSinkState, times: int, hold_seconds: float) -> None:
    with state.lock:
        state.time_out_next, state.hold_seconds = times, hold_seconds


def refuse(state: PayoutSinkState, account: str, code: str) -> None:
    with state.lock:
        state.refused[account] = code


def clear_faults(state: PayoutSinkState) -> None:
    with state.lock:
        state.fail_next = state.time_out_next = 0
        state.refused.clear()


class PayoutSink(ThreadedServer):
    """The sink served in a background thread on ``host:port`` (a context manager)."""

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        api_key: str = DEV_PAYOUT_API_KEY,
    ) -> None:
        self.state = PayoutSinkState(api_key=api_key)
        super().__init__(_app(self.state), port, host, name="payout sink")

    def fail_next(self, times: int, status: int = 503) -> None:
        """Answer the next ``times`` transfer calls ``status`` without committing them."""
        arm_failures(self.state, times, status)

    def time_out_after_commit(self, times: int = 1, hold_seconds: float = 30.0) -> None:
        """Commit the next ``times`` new transfers, then hold each answer for ``hold_seconds``
        (or until its client gives up)."""
        arm_timeouts(self.state, times, hold_seconds)

    def refuse(self, account: str, code: str = "account_closed") -> None:
        """Refuse every transfer to ``account`` from now on (422 with ``code``)."""
        refuse(self.state, account, code)

    def clear_faults(self) -> None:
        clear_faults(self.state)

    def transfers(self, idempotency_key: str | None = None) -> list[dict[str, Any]]:
        with self.state.lock:
            return [
                _public(t)
                for t in self.state.transfers.values()
                if idempotency_key is None or t["idempotency_key"] == idempotency_key
            ]

    def calls(self, idempotency_key: str | None = None) -> list[dict[str, Any]]:
        with self.state.lock:
            return [
                c
                for c in self.state.calls
                if idempotency_key is None or c["idempotency_key"] == idempotency_key
            ]

    def balance(self, account: str, currency: str) -> int:
        with self.state.lock:
            return self.state.balances.get(account, {}).get(currency, 0)
