"""Operator actions on the dashboard's Escrows view in headless Chromium, against a real stack
(api, worker running the escrow saga on the Temporal dev server, gateway, the payout sink): an
admin releases a funded escrow to an account the provider refuses, retries the held release and
refunds it from the page, each click with a fresh Idempotency-Key, the row moving live; a key
without the admin scope sees the held escrow's buttons disabled; a refusal (409) shows the
problem's detail."""

from __future__ import annotations

import contextlib
import uuid

from playwright.async_api import Page, expect
from temporalio.client import Client

from api.auth import create_api_key
from core.settings import Settings
from devstack.payout_sink import PayoutSink
from tests.escrow.support import balances, escrow_body, keyed, wallets
from tests.gateway.support import open_page, pages_with_worker, signed_in_page

UI_TIMEOUT = 15_000  # ms
HELD = ["created", "funding", "funded", "releasing", "release_failed"]


async def _click(page: Page, escrow_id: str, action: str) -> None:
    await page.locator(f"#escrows tr[data-escrow={escrow_id}] button[data-action={action}]").click()


async def test_an_admin_retries_then_refunds_a_held_release_from_the_escrows_view(
    settings: Settings,
    postgres_admin_url: str,
    temporal_client: Client,
    payout_sink: PayoutSink,
    chromium: str,
) -> None:
    """In headless Chromium with the admin key: Release on a funded escrow whose account the
    provider refuses holds it in release_failed; Retry release is refused again; Refund returns
    it, the row moving live each time, no reload; three clicks, three distinct keys. A read-only
    key's page shows the held escrow's buttons disabled and a funded one's not at all. A Refund
    clicked on a page that missed the escrow's refund shows the api's 409 detail."""
    account = f"acct_{uuid.uuid4().hex[:8]}"
    payout_sink.refuse(account, "account_closed")
    async with contextlib.AsyncExitStack() as exits:
        stack, pool, servers = await pages_with_worker(
            exits, settings, postgres_admin_url, temporal_client, admin=False
        )
        api_url, http, gateway = servers.api_url, servers.http, servers.gateway
        merchant, (first, second, third) = await wallets(http, pool, [100, 50, 20])

        page, errors = await signed_in_page(exits, chromium, api_url, stack, merchant)
        keys: list[str | None] = []
        page.on(
            "request",
            lambda request: (
                keys.append(request.headers.get("idempotency-key"))
                if request.method == "POST" and "/v1/escrows/" in request.url
                else None
            ),
        )
        await page.click(".tab[data-view=escrows]")
        await page.evaluate("() => { window.notReloaded = true; }")

        body = escrow_body(merchant, [(first, 60)], account=account, reference="prize-held")
        created = await http.post("/v1/escrows", json=body, headers=keyed())
        assert created.status_code == 201, created.text
        held = created.json()["id"]
        row = page.locator(f"#escrows tr[data-escrow={held}]")
        await expect(row).to_have_attribute("data-status", "funded", timeout=UI_TIMEOUT)
        buttons = row.get_by_role("button")
        await expect(buttons).to_have_text(["Release", "Refund"], timeout=UI_TIMEOUT)

        notice = page.locator("#escrow-notice")
        await _click(page, held, "release")
        await expect(row).to_have_attribute("data-status", "release_failed", timeout=UI_TIMEOUT)
        await expect(notice).to_have_attribute("data-outcome", "release_failed", timeout=UI_TIMEOUT)
        await expect(buttons).to_have_text(["Retry release", "Refund"])
        await expect(buttons.first).to_be_enabled()

        # A key without the admin scope: the held escrow's buttons, disabled; a funded one's, none.
        funded_body = escrow_body(merchant, [(second, 50)], account=account, reference="prize-2")
        funded = (await http.post("/v1/escrows", json=funded_body, headers=keyed())).json()["id"]
        await expect(page.locator(f"#escrows tr[data-escrow={funded}]")).to_have_attribute(
            "data-status", "funded", timeout=UI_TIMEOUT
        )
        async with pool.acquire() as conn:
            _, read_key = await create_api_key(conn, "dashboard-reader", ["read"])
        browser = page.context.browser
        assert browser is not None
        reader = await open_page(
            browser, f"{api_url}/dashboard?merchant={merchant}&view=escrows", errors
        )
        await reader.fill("#api-key", read_key)
        await reader.click("button[type=submit]")
        read_row = reader.locator(f"#escrows tr[data-escrow={held}]")
        await expect(read_row).to_have_attribute(
            "data-status", "release_failed", timeout=UI_TIMEOUT
        )
        await expect(read_row.get_by_role("button")).to_have_text(["Retry release", "Refund"])
        for button in await read_row.get_by_role("button").all():
            await expect(button).to_be_disabled()
        await expect(
            reader.locator(f"#escrows tr[data-escrow={funded}]").get_by_role("button")
        ).to_have_count(0)
        await reader.close()

        await _click(page, held, "release")  # the provider still refuses the account
        await expect(row.locator("ol.transitions li")).to_have_text(
            [*HELD, "releasing", "release_failed"], timeout=UI_TIMEOUT
        )
        await expect(notice).to_have_attribute("data-outcome", "release_failed", timeout=UI_TIMEOUT)
        await expect(buttons.first).to_be_enabled()

        await _click(page, held, "refund")
        await expect(row).to_have_attribute("data-status", "refunded", timeout=UI_TIMEOUT)
        await expect(row.locator("ol.transitions li")).to_have_text(
            [*HELD, "releasing", "release_failed", "refunding", "refunded"]
        )
        await expect(notice).to_have_attribute("data-outcome", "refunded")
        await expect(buttons).to_have_count(0)
        assert len(keys) == 3 and all(keys) and len(set(keys)) == 3, keys
        assert payout_sink.balance(account, "EUR") == 0
        assert await balances(pool, [first, held]) == [100, 0]

        # A page that missed a refund (its feed down) still offers Refund: the api says why not.
        other_body = escrow_body(merchant, [(third, 20)], account=account, reference="prize-3")
        other = (await http.post("/v1/escrows", json=other_body, headers=keyed())).json()["id"]
        assert (await http.post(f"/v1/escrows/{other}/release", json={}, headers=keyed())).json()[
            "status"
        ] == "release_failed"
        await expect(page.locator(f"#escrows tr[data-escrow={other}]")).to_have_attribute(
            "data-status", "release_failed", timeout=UI_TIMEOUT
        )
        await gateway.stop()
        await page.wait_for_function("() => window.switchboard.connState() !== 'live'")
        refunded = await http.post(f"/v1/escrows/{other}/refund", json={}, headers=keyed())
        assert refunded.json()["status"] == "refunded", refunded.text
        async with page.expect_response(f"**/v1/escrows/{other}/refund") as answer:
            await _click(page, other, "refund")
        refusal = await answer.value
        assert refusal.status == 409
        await expect(notice).to_have_attribute("data-outcome", "refused-409", timeout=UI_TIMEOUT)
        await expect(notice).to_have_text(f"prize-3: {(await refusal.json())['detail']}")
        await expect(page.locator(f"#escrows tr[data-escrow={other}]")).to_have_attribute(
            "data-status", "refunded"
        )
        assert await page.evaluate("window.notReloaded") is True
        assert errors == []
