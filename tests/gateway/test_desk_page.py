"""The exchange desk page in headless Chromium, against the real api and gateway: two operators
(two API keys) click Claim on the same request at once, exactly one wins, the other is told who,
and both pages show the assignment from the desk feed, live, without reloading; the winner
then works the request from "my requests" and its timeline shows every audited transition.

The issue's 100 ms target (a transition reaches every watcher) is measured, not asserted: by
``./run bench --only desk-live`` and in the figures this test logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from api.auth import create_api_key
from core.settings import Settings
from devstack.ports import free_port
from gateway.server import Gateway
from tests.exchange.support import create_request
from tests.gateway.support import add_merchant, open_page, running_gateway, serve_pages, sign_in
from tests.support import fresh_database, stores

log = logging.getLogger(__name__)

UI_TIMEOUT = 10_000  # ms
WON_OR_LOST = re.compile("^(won|lost)$")
LIVE_WITHIN_MS = 1_000
"""Proves the assignment was pushed (nothing but the feed and the claim's answer moves the queue
and the activity; a reload is asserted absent), with room for a loaded CI machine."""

# Records, in the page, when the request's assignment shows: its queue row gone (from the claim's
# answer or the feed, whichever came first) and the feed's "claimed by" line in the activity.
WATCH_ASSIGNMENT = """(id) => {
  window.shown = {};
  const row = `#queue tr[data-request="${id}"]`;
  const line = `#activity li[data-request="${id}"][data-to="assigned"]`;
  const seen = () => {
    const now = Date.now();
    if (!("queueRowGone" in window.shown) && !document.querySelector(row)) {
      window.shown.queueRowGone = now;
    }
    if (!("activity" in window.shown) && document.querySelector(line)) window.shown.activity = now;
  };
  const options = { childList: true, subtree: true };
  for (const list of ["queue", "activity"]) {
    new MutationObserver(seen).observe(document.getElementById(list), options);
  }
  document.addEventListener("click", () => { window.shown.clickedAt ??= Date.now(); }, true);
}"""

# Both pages press the button at one agreed instant of the wall clock they share.
CLICK_AT = """([selector, at]) => new Promise((resolve) => setTimeout(() => {
  document.querySelector(selector).click();
  resolve(Date.now());
}, at - Date.now()))"""

CLAIM_ANSWERED = """(id) => {
  const entries = performance.getEntriesByType("resource");
  const entry = entries.find((e) => e.name.endsWith(`/${id}/claim`));
  return entry ? performance.timeOrigin + entry.responseEnd : null;
}"""


@dataclass
class Desk:
    api_url: str
    http: httpx.AsyncClient
    pool: asyncpg.Pool
    merchant: str
    keys: dict[str, str]  # actor -> API key
    gateway: Gateway
    gateway_settings: Settings
    gateway_port: int


@pytest_asyncio.fixture
async def desk(
    gw_settings: Settings, postgres_admin_url: str, redis_url: str
) -> AsyncIterator[Desk]:
    """The api and a gateway on a database of their own (the desk feed is global), a merchant
    and two operators with keys that may work the desk."""
    gateway_port = free_port()
    settings = gw_settings.model_copy(
        update={
            "database_url": await fresh_database(postgres_admin_url),
            "gateway_public_url": f"ws://127.0.0.1:{gateway_port}",
        }
    )
    async with contextlib.AsyncExitStack() as exits:
        pool, _ = await exits.enter_async_context(stores(settings))
        servers = await serve_pages(exits, settings, pool, gateway_port)
        merchant = await add_merchant(pool)
        keys = {}
        async with pool.acquire() as conn:
            for name in ("ops-alice", "ops-bob"):
                key_id, key = await create_api_key(conn, name, ["read", "replay"])
                keys[f"api-key:{key_id}:{name}"] = key
        yield Desk(
            servers.api_url,
            servers.http,
            pool,
            merchant,
            keys,
            servers.gateway,
            servers.gateway_settings,
            gateway_port,
        )


async def _create(desk: Desk, amount: int) -> str:
    """A new request of ``amount`` EUR cents to BTC, through the api: its id."""
    created = await create_request(desk.http, desk.merchant, from_amount=amount, to_currency="BTC")
    return str(created["id"])


async def _desk_page(browser: Browser, desk: Desk, key: str, errors: list[str]) -> Page:
    """A page of its own (its own session storage), signed in with ``key`` and live."""
    page = await open_page(browser, f"{desk.api_url}/dashboard/desk", errors)
    await sign_in(page, key)
    return page


async def _committed_ms(pool: asyncpg.Pool, request_id: str) -> float:
    """When the claim's desk event was written, in its transaction (an upper bound on latency:
    the commit follows it)."""
    at = await pool.fetchval(
        "SELECT created_at FROM feed_events WHERE topic = 'desk' AND event_id = $1",
        f"{request_id}.v3",
    )
    return float(at.timestamp() * 1000)


async def test_two_operators_claim_at_once_one_wins_and_both_pages_show_it_live(
    desk: Desk, chromium: str
) -> None:
    """In headless Chromium, two operators' pages: both click Claim on one pending request at
    the same moment; one claims it, the other shows the 409 naming the winner; both pages show
    the assignment within 100 ms of the commit, without reloading. The winner then starts and
    completes it from "my requests", and its timeline lists every transition."""
    (alice, alice_key), (bob, bob_key) = desk.keys.items()
    errors: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            pages = {
                alice: await _desk_page(browser, desk, alice_key, errors),
                bob: await _desk_page(browser, desk, bob_key, errors),
            }
            for actor, page in pages.items():
                await expect(page.locator("#operator-name")).to_have_text(actor)

            # A request created after both pages went live reaches both queues from the feed.
            request_id = await _create(desk, 25_000)
            claim = f"#queue tr[data-request='{request_id}'] button[data-action=claim]"
            for page in pages.values():
                await expect(page.locator(claim)).to_be_enabled(timeout=UI_TIMEOUT)
                await page.evaluate(WATCH_ASSIGNMENT, request_id)
                await page.evaluate("() => { window.notReloaded = true; }")

            at = await pages[alice].evaluate("Date.now() + 300")
            await asyncio.gather(*(page.evaluate(CLICK_AT, [claim, at]) for page in pages.values()))
            outcomes: dict[str, str | None] = {}
            for actor, page in pages.items():
                notice = page.locator(f"#desk-notice[data-request='{request_id}']")
                await expect(notice).to_have_attribute(
                    "data-outcome", WON_OR_LOST, timeout=UI_TIMEOUT
                )
                outcomes[actor] = await notice.get_attribute("data-outcome")
            assert sorted(map(str, outcomes.values())) == ["lost", "won"], outcomes
            winner = next(actor for actor, outcome in outcomes.items() if outcome == "won")
            loser = bob if winner == alice else alice
            lost = pages[loser].locator("#desk-notice")
            await expect(lost).to_have_attribute("data-assignee", winner)
            await expect(lost).to_contain_text(winner)
            assert await desk.pool.fetchval(
                "SELECT array_agg(actor) FROM audit_log WHERE entity_id = $1"
                " AND to_state = 'assigned'",
                request_id,
            ) == [winner]

            # Both pages show the assignment, live, soon after the commit.
            committed = await _committed_ms(desk.pool, request_id)
            figures: dict[str, dict[str, Any]] = {}
            for actor, page in pages.items():
                await page.wait_for_function(
                    "() => 'queueRowGone' in window.shown && 'activity' in window.shown",
                    timeout=UI_TIMEOUT,
                )
                shown = await page.evaluate("window.shown")
                answered = await page.evaluate(CLAIM_ANSWERED, request_id)
                figures[actor] = {
                    "queue row gone after commit (ms)": shown["queueRowGone"] - committed,
                    "feed line shown after commit (ms)": shown["activity"] - committed,
                    "claim answered after commit (ms)": answered - committed,
                    "feed line after the page's answer (ms)": shown["activity"] - answered,
                    "click (ms after the first click)": shown["clickedAt"],
                }
                await expect(
                    page.locator(f"#activity li[data-request='{request_id}'][data-to=assigned]")
                ).to_contain_text(f"claimed by {winner}")
                await expect(page.locator(f"#queue tr[data-request='{request_id}']")).to_have_count(
                    0
                )
                assert await page.evaluate("window.notReloaded") is True
            first_click = min(f["click (ms after the first click)"] for f in figures.values())
            for f in figures.values():
                f["click (ms after the first click)"] -= first_click
            log.info("desk claim race, %s won: %s", winner, figures)
            for f in figures.values():
                assert f["queue row gone after commit (ms)"] < LIVE_WITHIN_MS, figures
                assert f["feed line shown after commit (ms)"] < LIVE_WITHIN_MS, figures
            await expect(
                pages[winner].locator(f"#mine tr[data-request='{request_id}']")
            ).to_be_visible()
            await expect(
                pages[loser].locator(f"#mine tr[data-request='{request_id}']")
            ).to_have_count(0)

            # The winner works it from "my requests"; the other page sees each step live.
            mine = pages[winner].locator(f"#mine tr[data-request='{request_id}']")
            await mine.locator("button[data-action=processing]").click()
            await expect(mine).to_have_attribute("data-status", "processing", timeout=UI_TIMEOUT)
            await mine.locator("button[data-action=completed]").click()
            await expect(mine).to_have_count(0, timeout=UI_TIMEOUT)
            await expect(
                pages[loser].locator(
                    f"#activity li[data-request='{request_id}'][data-to=completed]"
                )
            ).to_contain_text(f"processing → completed by {winner}", timeout=UI_TIMEOUT)

            # The timeline: every audited transition, oldest first.
            await (
                pages[loser]
                .locator(f"#activity li[data-request='{request_id}'] button")
                .first.click()
            )
            await expect(pages[loser].locator("#timeline li")).to_have_count(5, timeout=UI_TIMEOUT)
            assert await pages[loser].locator("#timeline li").evaluate_all(
                "items => items.map((li) => li.dataset.to)"
            ) == ["created", "pending", "assigned", "processing", "completed"]
            await pages[loser].get_by_role("button", name="Close").click()
            await expect(pages[loser].locator("#drawer")).to_be_hidden()

            # Released requests go back to both queues.
            second = await _create(desk, 4_000)
            second_claim = f"#queue tr[data-request='{second}'] button[data-action=claim]"
            await pages[loser].locator(second_claim).click(timeout=UI_TIMEOUT)
            held = pages[loser].locator(f"#mine tr[data-request='{second}']")
            await held.locator("button[data-action=release]").click(timeout=UI_TIMEOUT)
            await expect(held).to_have_count(0, timeout=UI_TIMEOUT)
            for page in pages.values():
                await expect(page.locator(second_claim)).to_be_enabled(timeout=UI_TIMEOUT)
                await expect(page.locator("#desk-kpis")).to_contain_text("Pending")
                await expect(page.locator("#desk-freshness")).to_be_hidden()

            # A keyboard user's focus on a Claim button survives the queue moving around it.
            await pages[winner].locator(second_claim).focus()
            third = await _create(desk, 5_000)
            await expect(pages[winner].locator(f"#queue tr[data-request='{third}']")).to_be_visible(
                timeout=UI_TIMEOUT
            )
            await expect(pages[winner].locator(second_claim)).to_be_focused()
        finally:
            await browser.close()
    assert errors == []


async def test_the_desk_resumes_after_a_gateway_restart_and_rereads_when_too_far_behind(
    desk: Desk, chromium: str
) -> None:
    """In headless Chromium: a claim made while the gateway was down shows once it is back, from
    the feed's replay (the queue is not read again); back after missing more than the gateway
    replays, the page is closed with 3010 and reads the queue again. Never a reload."""
    actor, key = next(iter(desk.keys.items()))
    errors: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = await _desk_page(browser, desk, key, errors)
            reads: list[str] = []
            page.on(
                "request",
                lambda request: (
                    reads.append(request.url) if "status=pending" in request.url else None
                ),
            )
            first = await _create(desk, 1_000)
            row = page.locator(f"#queue tr[data-request='{first}']")
            await expect(row).to_be_visible(timeout=UI_TIMEOUT)
            await page.evaluate("() => { window.notReloaded = true; }")

            await desk.gateway.stop()
            await page.wait_for_function("() => window.switchboard.connState() !== 'live'")
            assert (await desk.http.post(f"/v1/exchange-requests/{first}/claim")).status_code == 200
            async with running_gateway(desk.gateway_settings, desk.pool, desk.gateway_port) as back:
                await expect(row).to_have_count(0, timeout=20_000)
                await expect(
                    page.locator(f"#activity li[data-request='{first}'][data-to=assigned]")
                ).to_contain_text("claimed by api-key:bootstrap")
                assert reads == [], "resumed from its seq: the queue was not read again"
                await back.stop()
            await page.wait_for_function("() => window.switchboard.connState() !== 'live'")

            second, third = await _create(desk, 2_000), await _create(desk, 3_000)  # 4 events
            capped = desk.gateway_settings.model_copy(update={"gateway_max_replay_events": 2})
            async with running_gateway(capped, desk.pool, desk.gateway_port):
                for request_id in (second, third):
                    await expect(
                        page.locator(f"#queue tr[data-request='{request_id}']")
                    ).to_be_visible(timeout=20_000)
                await page.wait_for_function(
                    "() => window.switchboard.connState() === 'live'", timeout=UI_TIMEOUT
                )
                assert len(reads) == 1, reads
                assert await page.evaluate("window.switchboard.queue()") == [second, third]
                assert await page.evaluate("window.notReloaded") is True
                assert await page.evaluate("window.switchboard.me()") == actor
        finally:
            await browser.close()
    assert errors == []
