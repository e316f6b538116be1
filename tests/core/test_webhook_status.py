"""The webhook row's state machine: its docstring drawing is the table the code checks."""

from __future__ import annotations

import inspect

import pytest

from core.contracts import WEBHOOK_TRANSITIONS, WebhookStatus
from core.errors import IllegalTransition


def test_the_enum_docstring_draws_the_table() -> None:
    """``WebhookStatus``'s docstring shows exactly what ``WEBHOOK_TRANSITIONS`` allows."""
    assert WEBHOOK_TRANSITIONS.drawing() in inspect.cleandoc(WebhookStatus.__doc__ or "")


def test_settled_webhooks_move_only_by_replay() -> None:
    """Processed and ignored rows are final; a dead letter goes back only to ``received``."""
    assert WEBHOOK_TRANSITIONS.final == {WebhookStatus.PROCESSED, WebhookStatus.IGNORED}
    assert WEBHOOK_TRANSITIONS.successors(WebhookStatus.DEAD_LETTERED) == {WebhookStatus.RECEIVED}
    assert WEBHOOK_TRANSITIONS.predecessors(WebhookStatus.RECEIVED) == {WebhookStatus.DEAD_LETTERED}
    with pytest.raises(IllegalTransition):
        WEBHOOK_TRANSITIONS.check(WebhookStatus.PROCESSED, WebhookStatus.DEAD_LETTERED)
