"""The generic state-machine table: what it allows, refuses and draws."""

from __future__ import annotations

from enum import StrEnum

import pytest

from core.errors import IllegalTransition
from core.states import Transitions


class Door(StrEnum):
    OPEN = "open"
    SHUT = "shut"
    LOCKED = "locked"
    GONE = "gone"


DOOR = Transitions(
    "door",
    initial=Door.SHUT,
    moves={
        Door.OPEN: {Door.SHUT, Door.GONE},
        Door.SHUT: {Door.OPEN, Door.LOCKED, Door.SHUT},
        Door.LOCKED: {Door.SHUT},
        Door.GONE: set(),
    },
)


def test_drawn_moves_are_allowed_and_others_refused() -> None:
    """A drawn move is allowed, as enum or as the string read from a row; nothing else is."""
    assert DOOR.allows(Door.SHUT, Door.LOCKED)
    assert DOOR.allows("shut", "shut")
    assert not DOOR.allows(Door.LOCKED, Door.OPEN)
    assert not DOOR.allows(Door.GONE, Door.SHUT)
    assert not DOOR.allows("shut", "ajar")
    assert not DOOR.allows("ajar", "shut")


def test_creation_must_be_the_initial_status() -> None:
    """``None`` stands for a new row, which may only start in the initial status."""
    assert DOOR.allows(None, Door.SHUT)
    assert not DOOR.allows(None, Door.OPEN)


def test_check_raises_illegal_transition_naming_both_ends() -> None:
    """``check`` passes drawn moves and raises ``IllegalTransition`` for the others."""
    DOOR.check(Door.OPEN, Door.GONE)
    with pytest.raises(IllegalTransition, match="door may not go from locked to open"):
        DOOR.check(Door.LOCKED, Door.OPEN)


def test_queries_final_predecessors_successors_and_edges() -> None:
    """The table answers which statuses are final and which lead to or from a status."""
    assert DOOR.final == {Door.GONE}
    assert DOOR.predecessors(Door.SHUT) == {Door.OPEN, Door.SHUT, Door.LOCKED}
    assert DOOR.successors(Door.LOCKED) == {Door.SHUT}
    assert list(DOOR)[:2] == [(None, Door.SHUT), (Door.OPEN, Door.SHUT)]
    assert len(list(DOOR)) == 7


def test_drawing_lists_every_status_in_enum_order() -> None:
    """The drawing is one bullet per status, final ones marked, for an enum's docstring."""
    assert DOOR.drawing().splitlines() == [
        "* (new) → shut",
        "* open → shut, gone",
        "* shut → open, shut, locked",
        "* locked → shut",
        "* gone → (final)",
    ]


def test_every_member_must_be_listed() -> None:
    """A table that forgets a status, or names a foreign one, is refused when built."""
    with pytest.raises(ValueError, match="missing"):
        Transitions("door", initial=Door.SHUT, moves={Door.SHUT: {Door.OPEN}})
