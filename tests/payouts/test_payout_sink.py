"""The payout provider sink over real HTTP: idempotent transfers (Stripe semantics), its own
balances, and each fault it can be told to produce."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core.settings import DEV_PAYOUT_API_KEY
from devstack.payout_sink import REPLAYED_HEADER, PayoutSink
from devstack.ports import free_port


@pytest.fixture
def sink() -> Iterator[PayoutSink]:
    """A sink of this test's own, so its faults and books touch no other test."""
    with PayoutSink(free_port()) as server:
        yield server


@pytest.fixture
def client(sink: PayoutSink) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=sink.url,
        headers={"Authorization": f"Bearer {DEV_PAYOUT_API_KEY}"},
        timeout=5.0,
    ) as http:
        yield http


def _transfer(
    client: httpx.Client, key: str, account: str = "acct_winner", amount: int = 1250, **extra: Any
) -> httpx.Response:
    body = {"account": account, "amount": amount, "currency": "EUR", "reference": "prize-1"}
    return client.post("/v1/transfers", json={**body, **extra}, headers={"Idempotency-Key": key})


def test_a_transfer_commits_once_and_its_repeat_is_a_replay(
    client: httpx.Client, sink: PayoutSink
) -> None:
    """The first call answers 201; a repeat with the same key and parameters returns the same
    transfer (200, marked as a replay) and pays nothing more."""
    first = _transfer(client, "k-1")
    again = _transfer(client, "k-1")

    assert first.status_code == 201 and REPLAYED_HEADER not in first.headers
    assert first.json()["status"] == "paid" and first.json()["amount"] == 1250
    assert again.status_code == 200 and again.headers[REPLAYED_HEADER] == "true"
    assert again.json() == first.json()
    assert client.get("/v1/accounts/acct_winner").json()["balances"] == {"EUR": 1250}
    listed = client.get("/v1/transfers", params={"idempotency_key": "k-1"}).json()["data"]
    assert [t["id"] for t in listed] == [first.json()["id"]]


def test_the_same_key_with_other_parameters_is_a_422(client: httpx.Client) -> None:
    """Reusing a key for a different transfer is refused and moves no money."""
    assert _transfer(client, "k-2", amount=100).status_code == 201
    reused = _transfer(client, "k-2", amount=200)

    assert reused.status_code == 422
    assert reused.headers["content-type"] == "application/problem+json"
    assert reused.json()["code"] == "idempotency_key_reused"
    assert client.get("/v1/accounts/acct_winner").json()["balances"] == {"EUR": 100}


def test_balances_add_up_per_account_and_currency(client: httpx.Client) -> None:
    _transfer(client, "k-a", account="acct_a", amount=300)
    _transfer(client, "k-b", account="acct_a", amount=200)
    _transfer(client, "k-c", account="acct_a", amount=50, currency="USD")
    _transfer(client, "k-d", account="acct_b", amount=7)

    assert client.get("/v1/accounts/acct_a").json()["balances"] == {"EUR": 500, "USD": 50}
    assert client.get("/v1/accounts/acct_b").json()["balances"] == {"EUR": 7}
    assert len(client.get("/v1/transfers").json()["data"]) == 4


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({"Authorization": "Bearer wrong"}, {}, 401, "unauthorized"),
        ({"Idempotency-Key": ""}, {}, 400, "invalid_request"),
        ({}, {"amount": 0}, 400, "invalid_request"),
        ({}, {"amount": 12.5}, 400, "invalid_request"),
        ({}, {"currency": "euro"}, 400, "invalid_request"),
    ],
)
def test_bad_requests_are_problems_that_commit_nothing(
    client: httpx.Client, headers: dict[str, str], body: dict[str, Any], status: int, code: str
) -> None:
    request = {"account": "acct_x", "amount": 10, "currency": "EUR", "reference": "r", **body}
    answer = client.post(
        "/v1/transfers", json=request, headers={"Idempotency-Key": "k-bad", **headers}
    )

    assert (answer.status_code, answer.json()["code"]) == (status, code)
    assert client.get("/v1/transfers").json()["data"] == []


def test_armed_failures_answer_503_and_commit_nothing(
    client: httpx.Client, sink: PayoutSink
) -> None:
    """The next N calls fail with 503 (nothing committed); the one after commits."""
    client.post("/_faults", json={"mode": "fail", "times": 2})

    statuses = [_transfer(client, "k-f").status_code for _ in range(3)]

    assert statuses == [503, 503, 201]
    assert len(sink.transfers("k-f")) == 1
    assert sink.balance("acct_winner", "EUR") == 1250


def test_commit_then_time_out_pays_and_the_retry_returns_the_original(
    client: httpx.Client, sink: PayoutSink
) -> None:
    """A call the sink commits and then holds past the client's timeout has paid; the retry with
    the same key gets that transfer back instead of paying again."""
    sink.time_out_after_commit(times=1, hold_seconds=30)

    body = {"account": "acct_t", "amount": 900, "currency": "EUR", "reference": "r"}
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/transfers", json=body, headers={"Idempotency-Key": "k-t"}, timeout=0.5)
    assert sink.balance("acct_t", "EUR") == 900
    retry = client.post("/v1/transfers", json=body, headers={"Idempotency-Key": "k-t"})

    assert retry.status_code == 200 and retry.headers[REPLAYED_HEADER] == "true"
    assert retry.json()["id"] == sink.transfers("k-t")[0]["id"]
    assert sink.balance("acct_t", "EUR") == 900


def test_a_refused_account_is_refused_for_good(client: httpx.Client) -> None:
    """A closed account answers a 422 problem with its code on every call, and is never paid."""
    client.post("/_faults", json={"mode": "refuse", "account": "acct_gone"})

    answers = [_transfer(client, f"k-r{i}", account="acct_gone") for i in range(2)]

    assert [(a.status_code, a.json()["code"]) for a in answers] == [(422, "account_closed")] * 2
    account = client.get("/v1/accounts/acct_gone").json()
    assert (account["status"], account["balances"]) == ("closed", {})


def test_clearing_faults_restores_normal_service(client: httpx.Client) -> None:
    client.post("/_faults", json={"mode": "fail", "times": 5})
    client.post("/_faults", json={"mode": "refuse", "account": "acct_winner"})
    client.delete("/_faults")

    assert _transfer(client, f"k-{uuid.uuid4().hex}").status_code == 201
