"""``switchboard demo``: steady synthetic partner traffic with a progress bar, then a report.

Open-loop: webhook *i* is sent at ``start + i / rate`` whatever the answers take, like a real
partner. The mix is payments (some failing), partial refunds of earlier payments, and balance
updates, spread over a few merchants, the first of them the dev stack's ``merchant_demo`` (the
merchant whose dashboard ``switchboard dev`` prints, and whose play endpoint receives). After
sending, it waits (bounded) until Switchboard has processed what it accepted, reading the
operator API's per-partner counts.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from cli.dev_state import DEMO_MERCHANT
from core.signing import sign_headers

__all__ = ["DemoPlan", "DemoReport", "demo_merchants", "run_demo"]

SETTLE_TIMEOUT = 120.0
FINAL = ("processed", "ignored", "dead_lettered")


@dataclass
class DemoReport:
    """What the demo sent and what became of it."""

    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    processed: int = 0
    dead_lettered: int = 0
    still_pending: int = 0
    elapsed_seconds: float = 0.0
    accepted_by_merchant: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.rejected + self.dead_lettered + self.still_pending

    def summary(self) -> str:
        first = next(iter(self.accepted_by_merchant), None)
        return (
            f"sent {self.sent} in {self.elapsed_seconds:.1f}s · accepted {self.accepted}"
            f" · processed {self.processed} · failed {self.failed}"
            f" (rejected {self.rejected}, dead-lettered {self.dead_lettered},"
            f" pending {self.still_pending})"
            + (f" · {self.accepted_by_merchant[first]} for {first}" if first else "")
        )


def demo_merchants(first: str, count: int) -> list[str]:
    """The merchants traffic is spread over: ``first``, then ``first_1`` … ``first_{count-1}``."""
    return [first, *(f"{first}_{n}" for n in range(1, count))]


class _Traffic:
    """Generates a plausible event stream: refunds only of payments already sent."""

    def __init__(self, merchants: list[str], rng: random.Random) -> None:
        self.merchants = merchants
        self.rng = rng
        self.refundable: list[tuple[str, str, int]] = []

    def next(self) -> dict[str, Any]:
        roll = self.rng.random()
        merchant = self.rng.choice(self.merchants)
        if roll < 0.15 and self.refundable:
            payment_id, merchant, amount = self.refundable.pop(
                self.rng.randrange(len(self.refundable))
            )
            data: dict[str, Any] = {
                "refund_id": f"re_{uuid.uuid4().hex[:12]}",
                "payment_id": payment_id,
                "amount": max(1, amount // 2),
            }
            kind = "refund.succeeded"
        elif roll < 0.25:
            data = {
                "available": self.rng.randrange(10**6),
                "pending": self.rng.randrange(10**4),
                "as_of": datetime.now(UTC).isoformat(),
            }
            kind = "balance.updated"
        elif roll < 0.30:
            data = {
                "payment_id": f"pay_{uuid.uuid4().hex[:12]}",
                "amount": self.rng.randrange(100, 50_000),
                "failure_code": "card_declined",
            }
            kind = "payment.failed"
        else:
            amount = self.rng.randrange(100, 50_000)
            payment_id = f"pay_{uuid.uuid4().hex[:12]}"
            self.refundable.append((payment_id, merchant, amount))
            data = {"payment_id": payment_id, "amount": amount}
            kind = "payment.succeeded"
        return {"type": kind, "data": {"merchant_id": merchant, "currency": "EUR", **data}}


@dataclass(frozen=True)
class DemoPlan:
    """Where to send, as whom, and how much."""

    base_url: str
    partner_id: str
    secret: str
    rate: float
    duration: float
    merchants: int
    first_merchant: str = DEMO_MERCHANT
    seed: int | None = None
    """Seeds the traffic's random choices (the same seed, the same mix and merchants)."""


def run_demo(plan: DemoPlan, *, operator: httpx.Client, show_progress: bool) -> DemoReport:
    """Send ``plan.rate`` webhooks/s for ``plan.duration`` s, then report (see module docstring)."""
    return asyncio.run(_run(plan, operator, show_progress))


async def _run(plan: DemoPlan, operator: httpx.Client, show_progress: bool) -> DemoReport:
    report = DemoReport()
    rate, partner_id, secret = plan.rate, plan.partner_id, plan.secret
    total = max(1, int(rate * plan.duration))
    merchants = demo_merchants(plan.first_merchant, plan.merchants)
    report.accepted_by_merchant = dict.fromkeys(merchants, 0)
    traffic = _Traffic(merchants, random.Random(plan.seed))
    since = datetime.now(UTC)
    started = time.monotonic()
    progress = Progress(
        TextColumn("[bold]demo[/bold]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} sent · {task.fields[accepted]} accepted"),
        TimeRemainingColumn(),
        disable=not show_progress,
    )
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=plan.base_url, timeout=30, limits=limits) as http:

        async def send_one(merchant: str, body: bytes) -> None:
            msg_id = f"msg_{uuid.uuid4().hex}"
            headers = {
                "content-type": "application/json",
                **sign_headers(secret, msg_id, body, now=int(time.time())),
            }
            try:
                response = await http.post(f"/webhooks/{partner_id}", content=body, headers=headers)
                ok = response.status_code in (200, 202)
            except httpx.HTTPError:
                ok = False
            report.accepted += ok
            report.rejected += not ok
            report.accepted_by_merchant[merchant] += ok

        with progress:
            task = progress.add_task("send", total=total, accepted=0)
            pending: set[asyncio.Task[None]] = set()
            for i in range(total):
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                event = traffic.next()
                body = json.dumps(event).encode()
                sender = asyncio.create_task(send_one(event["data"]["merchant_id"], body))
                pending.add(sender)
                sender.add_done_callback(pending.discard)
                report.sent += 1
                progress.update(task, completed=report.sent, accepted=report.accepted)
            await asyncio.gather(*pending)
            progress.update(task, completed=report.sent, accepted=report.accepted)
    report.elapsed_seconds = time.monotonic() - started
    await _wait_processed(operator, partner_id, since, report)
    return report


async def _wait_processed(
    operator: httpx.Client, partner_id: str, since: datetime, report: DemoReport
) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        counts = operator.get(
            "/v1/stats", params={"partner_id": partner_id, "since": since.isoformat()}
        ).json()["by_status"]
        settled = sum(counts.get(status, 0) for status in FINAL)
        report.processed = counts.get("processed", 0) + counts.get("ignored", 0)
        report.dead_lettered = counts.get("dead_lettered", 0)
        report.still_pending = max(0, report.accepted - settled)
        if settled >= report.accepted or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.25)
