"""The dashboard's Escrows view in headless Chromium, against a real stack (api, worker running
the escrow saga on the Temporal dev server, gateway): an escrow created through the api appears
and moves through its transitions on the page, live from the merchant's feed, without a reload."""

from __future__ import annotations

import contextlib

from playwright.async_api import expect
from temporalio.client import Client

from core.settings import Settings
from tests.escrow.support import escrow_body, keyed, wallets
from tests.gateway.support import pages_with_worker, signed_in_page

UI_TIMEOUT = 10_000  # ms

# Records every status each escrow row shows, in order, from the page's own DOM changes.
WATCH_STATUSES = """() => {
  window.seenStatuses = {};
  const record = () => {
    for (const row of document.querySelectorAll("#escrows tr[data-escrow]")) {
      const seen = (window.seenStatuses[row.dataset.escrow] ||= []);
      if (seen.at(-1) !== row.dataset.status) seen.push(row.dataset.status);
    }
  };
  new MutationObserver(record).observe(document.getElementById("escrows"), { childList: true });
  window.notReloaded = true;
}"""


async def test_the_escrows_view_moves_escrows_live_from_the_feed(
    settings: Settings, postgres_admin_url: str, temporal_client: Client, chromium: str
) -> None:
    """In headless Chromium: escrows created after the page went live appear with amount,
    sources and beneficiary and their transitions as they commit (created → funding → funded →
    released, and → refunding → refunded), with no reload and no second sync."""
    async with contextlib.AsyncExitStack() as exits:
        stack, pool, servers = await pages_with_worker(
            exits, settings, postgres_admin_url, temporal_client, admin=False
        )
        api_url, http = servers.api_url, servers.http
        merchant, (first, second, winner) = await wallets(http, pool, [100, 50, 0])

        page, errors = await signed_in_page(exits, chromium, api_url, stack, merchant)
        await page.click(".tab[data-view=escrows]")
        await expect(page.locator("#escrows-empty")).to_be_visible()
        await page.evaluate(WATCH_STATUSES)

        body = escrow_body(
            merchant, [(first, 60), (second, 30)], wallet=winner, reference="prize-1"
        )
        created = await http.post("/v1/escrows", json=body, headers=keyed())
        assert created.status_code == 201, created.text
        escrow_id = created.json()["id"]
        row = page.locator(f"#escrows tr[data-escrow={escrow_id}]")
        await expect(row).to_have_attribute("data-status", "funded", timeout=UI_TIMEOUT)
        await expect(row.locator("ol.transitions li")).to_have_text(
            ["created", "funding", "funded"]
        )
        await expect(row.locator("td").nth(1)).to_contain_text("0.90")
        await expect(row.locator(f"li[data-wallet={first}]")).to_contain_text("0.60")
        await expect(row.locator(f"li[data-wallet={second}]")).to_contain_text("0.30")
        await expect(row).to_contain_text(f"wallet {winner}")

        released = await http.post(
            f"/v1/escrows/{escrow_id}/release", json={"reason": "winner drawn"}, headers=keyed()
        )
        assert released.json()["status"] == "released", released.text
        await expect(row).to_have_attribute("data-status", "released", timeout=UI_TIMEOUT)
        await expect(row.locator("ol.transitions li")).to_have_text(
            ["created", "funding", "funded", "releasing", "released"]
        )
        await expect(page.locator("#escrow-live")).to_contain_text("released")

        refunded_body = escrow_body(merchant, [(first, 40)], wallet=winner, reference="prize-2")
        second_escrow = (await http.post("/v1/escrows", json=refunded_body, headers=keyed())).json()
        other = page.locator(f"#escrows tr[data-escrow={second_escrow['id']}]")
        await expect(other).to_have_attribute("data-status", "funded", timeout=UI_TIMEOUT)
        refund = await http.post(
            f"/v1/escrows/{second_escrow['id']}/refund", json={}, headers=keyed()
        )
        assert refund.json()["status"] == "refunded", refund.text
        await expect(other.locator("ol.transitions li")).to_have_text(
            ["created", "funding", "funded", "refunding", "refunded"], timeout=UI_TIMEOUT
        )
        await expect(page.locator("#escrows tr").first).to_have_attribute(
            "data-escrow", second_escrow["id"]
        )

        seen = await page.evaluate("window.seenStatuses")
        # Transitions landing within one animation frame are painted together, so the page may
        # skip an intermediate status, but it shows funded before released, live.
        assert seen[escrow_id][-1] == "released" and "funded" in seen[escrow_id], seen
        assert seen[second_escrow["id"]][-1] == "refunded", seen
        assert await page.evaluate("window.notReloaded") is True
        assert await page.evaluate("window.switchboard.syncs()") == 1
        assert errors == []
