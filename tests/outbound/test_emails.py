"""Emails end to end: a successful payment mails a receipt to the customer and a sale notice to
the merchant, through a real SMTP server (the dev stack's sink), once per event and recipient."""

from __future__ import annotations

import uuid

import asyncpg
import httpx
import pytest

from devstack.mailsink import MailSink
from tests.support import Partner, wait_for

pytestmark = pytest.mark.usefixtures("pipeline")

ADMIN = {"authorization": "Bearer sb_dev_admin_key"}


async def test_payment_mails_a_receipt_and_a_sale_notice_once(
    partner: Partner, pool: asyncpg.Pool, http: httpx.AsyncClient, mail_sink: MailSink
) -> None:
    merchant = f"m-{uuid.uuid4().hex[:8]}"
    owner = f"owner-{merchant}@merchant.example"
    customer = f"buyer-{merchant}@customer.example"
    created = await http.post(
        "/v1/merchants",
        json={"id": merchant, "name": "Corner Shop", "email": owner},
        headers=ADMIN,
    )
    assert created.status_code == 201, created.text
    envelope = partner.envelope(
        "payment.succeeded",
        payment_id="pay_mail",
        merchant_id=merchant,
        amount=1250,
        currency="EUR",
        customer_email=customer,
    )
    first = await partner.post(envelope, webhook_id="wh_mail")
    repeat = await partner.post(envelope, webhook_id="wh_mail")
    assert (first.status_code, repeat.status_code) == (202, 200)
    event_id = first.json()["event_id"]

    async def delivered() -> list[asyncpg.Record] | None:
        rows = await pool.fetch(
            "SELECT id, recipient, template, status FROM deliveries WHERE event_id = $1"
            " ORDER BY template",
            event_id,
        )
        return rows if len(rows) == 2 and all(r["status"] == "succeeded" for r in rows) else None

    receipt, notice = await wait_for(delivered, what="both emails to be delivered")
    assert (receipt["template"], receipt["recipient"]) == ("receipt", customer)
    assert (notice["template"], notice["recipient"]) == ("sale_notice", owner)

    mails = [m for m in mail_sink.messages() if merchant in m.to]
    assert sorted(m.to for m in mails) == sorted([customer, owner])
    by_recipient = {m.to: m for m in mails}
    to_customer = by_recipient[customer]
    assert to_customer.subject == "Your receipt for 12.50 EUR from Corner Shop"
    assert "12.50 EUR" in to_customer.text and "pay_mail" in to_customer.text
    assert to_customer.html is not None and "<strong>12.50 EUR</strong>" in to_customer.html
    assert to_customer.message_id == f"<{receipt['id']}@switchboard>"
    to_owner = by_recipient[owner]
    assert to_owner.subject == "New sale: 12.50 EUR (pay_mail)"
    assert customer in to_owner.text
