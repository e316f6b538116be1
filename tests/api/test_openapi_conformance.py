"""The api answers as its OpenAPI document says: schemathesis, every check, against the real api.

Schemathesis runs its whole plan (examples, coverage, fuzzing and stateful phases, as
``schemathesis run --checks all`` does) at a bounded size in a worker thread, while the api it
calls serves on this event loop. Operator requests carry the dev admin key; ingress requests are
signed with a real partner's secret, so the document's claims about accepted webhooks are tested
too, not only the 401 every unsigned one gets.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest_asyncio
import requests
import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.engine import events, from_schema
from schemathesis.hooks import GLOBAL_HOOK_DISPATCHER

from core.settings import DEV_ADMIN_API_KEY, Settings
from core.signing import sign_headers
from tests.support import isolated_settings, running_api

MAX_EXAMPLES = 25
"""Per operation and phase: about 40 s for every operation on two cores."""


@pytest_asyncio.fixture(scope="module")
async def fuzzed_api(settings: Settings, postgres_admin_url: str) -> AsyncIterator[str]:
    """The real api on a database of its own: schemathesis calls every write route with
    whatever ids it finds (it revokes API keys, pauses endpoints, relinks merchants), which
    must not reach the rows other tests share. No worker runs escrows here, so the api waits
    only briefly for a saga's outcome before its 202."""
    isolated = await isolated_settings(settings, postgres_admin_url, escrow_wait_seconds=0.5)
    async with running_api(isolated) as url:
        yield url


async def test_the_api_conforms_to_its_openapi_document(fuzzed_api: str) -> None:
    """Every response has a documented status, media type, headers and schema; invalid input is
    refused with a 4xx, valid input is not, and no request gets a 5xx."""
    async with httpx.AsyncClient(base_url=fuzzed_api, timeout=30) as http:
        response = await http.post(
            "/v1/partners",
            json={"id": f"p-{uuid.uuid4().hex[:10]}", "auto_onboard_merchants": True},
            headers={"Authorization": f"Bearer {DEV_ADMIN_API_KEY}"},
        )
    response.raise_for_status()
    partner = SigningPartner(response.json()["id"], response.json()["secret"])
    failures = await asyncio.to_thread(run_schemathesis, fuzzed_api, partner)
    assert not failures, f"{len(failures)} conformance failures:\n\n" + "\n\n".join(failures)


@dataclass(frozen=True)
class SigningPartner:
    id: str
    secret: str


def run_schemathesis(api_url: str, partner: SigningPartner) -> list[str]:
    """Run schemathesis's full plan against ``api_url``; return each distinct failure."""
    config = schemathesis.Config.from_dict(
        {
            "base-url": api_url,
            "headers": {"Authorization": f"Bearer {DEV_ADMIN_API_KEY}"},
            "workers": 1,
            "request-timeout": 10,
            "checks": {"enabled": True},
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "database": "none",
                # Postgres text cannot hold NUL, so the api refuses it (422) in any text it
                # stores, a rule JSON Schema cannot state once for every string.
                "allow-x00": False,
            },
        }
    )
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json", config=config)

    def before_call(_: schemathesis.HookContext, case: schemathesis.Case[Any], kwargs: Any) -> None:
        if case.operation.path == "/webhooks/{partner_id}":
            _sign(case, kwargs, partner)
        elif case.operation.path.startswith("/v1/endpoints") and case.method in ("POST", "PATCH"):
            _allowed_destination(case)
        elif case.method == "POST" and case.operation.path.startswith(
            ("/v1/wallets", "/v1/transfers", "/v1/exchange-requests", "/v1/escrows")
        ):
            _fresh_idempotency_key(case)
        if case.method == "POST" and case.operation.path == "/v1/exchange-requests":
            _two_currencies(case)
        if case.method == "POST" and case.operation.path == "/v1/escrows":
            _escrow_rules(case)

    schemathesis.hook(before_call)
    try:
        with warnings.catch_warnings():
            # Hypothesis warns that printing a large generated body is slow; that is about the
            # fuzzer's reports, not the api.
            warnings.filterwarnings("ignore", "Generating overly large repr")
            return _failures(from_schema(schema).execute())
    finally:
        GLOBAL_HOOK_DISPATCHER.unregister(before_call)


def _sign(case: schemathesis.Case[Any], kwargs: dict[str, Any], partner: SigningPartner) -> None:
    """Send a case to the real partner, signed, unless it is about the path or the headers
    being wrong (those must be refused as they are)."""
    meta = case.meta
    if meta is not None and meta.is_negative_at(ParameterLocation.PATH):
        return
    case.path_parameters = {"partner_id": partner.id}
    if meta is not None and meta.is_negative_at(ParameterLocation.HEADER):
        return
    kwargs["auth"] = _StandardWebhooks(partner.secret)


def _allowed_destination(case: schemathesis.Case[Any]) -> None:
    """Point a valid endpoint URL at a destination the delivery network policy allows: which
    hosts it allows is deployment policy (the test settings allow only loopback), which no
    schema can say."""
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.BODY):
        return
    if isinstance(case.body, dict) and isinstance(case.body.get("url"), str):
        case.body["url"] = "http://127.0.0.1:9/hooks"


def _fresh_idempotency_key(case: schemathesis.Case[Any]) -> None:
    """Give a valid money request a key of its own: a key is the client's promise that this is
    a new request, and one reused with other parameters is refused (422), which no schema can
    say."""
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
        return
    case.headers["Idempotency-Key"] = str(uuid.uuid4())


def _two_currencies(case: schemathesis.Case[Any]) -> None:
    """An exchange needs two different currencies (a 422 otherwise), a rule between two fields
    that no schema can say."""
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.BODY):
        return
    body = case.body
    if isinstance(body, dict) and body.get("from_currency") == body.get("to_currency"):
        body["to_currency"] = "USDT" if body.get("from_currency") != "USDT" else "EUR"


def _escrow_rules(case: schemathesis.Case[Any]) -> None:
    """An escrow's sources are distinct wallets, its beneficiary wallet is none of them, and it
    expires in the future (a 422 otherwise): rules across list items, fields and the clock that
    no schema can say."""
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.BODY):
        return
    body = case.body
    if isinstance(body, dict) and "expires_at" in body:
        body["expires_at"] = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    sources = body.get("sources") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(sources, list):
        return
    seen: set[object] = set()
    distinct = []
    for source in sources:
        wallet = source.get("wallet_id") if isinstance(source, dict) else None
        if wallet not in seen:
            seen.add(wallet)
            distinct.append(source)
    body["sources"] = distinct
    beneficiary = body.get("beneficiary")
    if isinstance(beneficiary, dict) and beneficiary.get("wallet_id") in seen:
        body["beneficiary"] = {"account": "acct_conformance"}


class _StandardWebhooks(requests.auth.AuthBase):
    """Signs the request's exact body bytes, as serialized for the wire."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        assert isinstance(body, bytes)
        headers = sign_headers(self.secret, f"msg_{uuid.uuid4().hex}", body, now=int(time.time()))
        request.headers.update(headers)
        return request


def _failures(stream: Any) -> list[str]:
    found: dict[tuple[str, str, str], str] = {}
    for event in stream:
        if isinstance(event, events.ScenarioFinished):
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    failure = check.failure_info.failure
                    key = (event.recorder.label, check.name, failure.title)
                    found.setdefault(
                        key,
                        f"{event.recorder.label} [{check.name}] {failure.title}: "
                        f"{failure.message}\n    {check.failure_info.code_sample}",
                    )
        elif isinstance(event, events.NonFatalError):
            found.setdefault(
                (event.label, "error", str(event.value)), f"{event.label}: {event.info}"
            )
        elif isinstance(event, events.FatalError):
            raise event.exception
    return list(found.values())


async def test_a_repeated_query_parameter_is_refused(http: httpx.AsyncClient) -> None:
    """``?since=a&since=b`` is a 422 problem naming the parameter, not a guess at one value."""
    response = await http.get(
        "/v1/stats",
        params=[("since", "2026-01-01T00:00:00Z"), ("since", "2026-02-01T00:00:00Z")],
        headers={"Authorization": f"Bearer {DEV_ADMIN_API_KEY}"},
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["query", "since"]


async def test_the_document_declares_the_signed_ingress_request(http: httpx.AsyncClient) -> None:
    """The ingress's three webhook headers and its JSON envelope are in the document."""
    document = (await http.get("/openapi.json")).json()
    ingress = document["paths"]["/webhooks/{partner_id}"]["post"]
    headers = {p["name"] for p in ingress["parameters"] if p["in"] == "header" and p["required"]}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    envelope = ingress["requestBody"]["content"]["application/json"]["schema"]
    assert envelope["required"] == ["type", "data"]
    assert "application/problem+json" in ingress["responses"]["401"]["content"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
