"""Determinism guard (D5): every committed history replays with the current workflow code."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from worker import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent.parent / "histories").glob("*.json"))


def test_every_path_has_a_committed_history() -> None:
    """Histories cover applied, woken, parked, dead-lettered and ignored webhooks; delivery
    lanes that retried, delivered at once, or gave up; and escrows released to a wallet,
    failed in funding and compensated, refused at release then refunded, expired and
    refunded."""
    assert {path.stem for path in HISTORIES} >= {
        "payment_applied_and_published",
        "payment_applied_wakes_refund",
        "refund_waits_then_woken",
        "refund_parked_after_window",
        "refund_exceeding_dead_lettered",
        "unknown_type_ignored",
        "lane_retried_then_delivered",
        "lane_delivered_at_once",
        "lane_exhausted_dead_lettered",
        "escrow_released_to_wallet",
        "escrow_funding_failed_compensated",
        "escrow_release_refused_then_refunded",
        "escrow_expired_refunded",
    }


@pytest.mark.parametrize("path", HISTORIES, ids=lambda path: path.stem)
async def test_history_replays_deterministically(path: Path) -> None:
    """Replaying the recorded history with today's code raises no non-determinism error."""
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await Replayer(workflows=WORKFLOWS).replay_workflow(history)
    assert result.replay_failure is None
