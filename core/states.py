"""State machines drawn once: which status may follow which, for any ``StrEnum`` status column.

A status enum declares its lifecycle with one :class:`Transitions` table right below it (see
:data:`core.contracts.WEBHOOK_TRANSITIONS`), and its docstring shows that table as
:meth:`Transitions.drawing` renders it, so the picture and the rules cannot drift (a unit test
compares them). Code that knows a row's current status checks a change with
:meth:`Transitions.check` before writing it; SQL that changes status binds the enum members
rather than spelling them; tests compare the transitions the pipeline really made with
:meth:`Transitions.allows`.

Pure and import-safe (no I/O), so workflows, activities, the api and the relays can all use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from typing import Generic, TypeVar

from core.errors import IllegalTransition

__all__ = ["Transitions"]

S = TypeVar("S", bound=StrEnum)


class Transitions(Generic[S]):
    """The allowed transitions of one status enum: where a row starts and where each status
    may go next.

    ``moves`` must name every member of the enum, a final status with no successors; a status
    that may be written again unchanged (a refund still waiting) lists itself. Values read from
    the database may be passed as plain strings; anything outside the enum is never allowed.
    """

    def __init__(self, entity: str, *, initial: S, moves: Mapping[S, Iterable[S]]) -> None:
        self.entity = entity
        """What the rows are, as the audit log's ``entity_type`` names them (``"webhook"``)."""
        self.initial = initial
        self._enum: type[S] = type(initial)
        self._moves: dict[S, frozenset[S]] = {
            state: frozenset(after) for state, after in moves.items()
        }
        members = set(self._enum)
        named = set(self._moves) | {s for after in self._moves.values() for s in after}
        if set(self._moves) != members or not named <= members:
            missing = sorted(members - set(self._moves))
            raise ValueError(
                f"{self._enum.__name__} transitions must list each member once"
                f" (missing: {missing}, foreign: {sorted(named - members)})"
            )

    def allows(self, old: S | str | None, new: S | str) -> bool:
        """Whether a row may go from ``old`` to ``new``; ``old=None`` is the row's creation."""
        target = self._member(new)
        if target is None:
            return False
        if old is None:
            return target == self.initial
        source = self._member(old)
        return source is not None and target in self._moves[source]

    def check(self, old: S | str | None, new: S | str) -> None:
        """Raise :class:`~core.errors.IllegalTransition` unless ``old`` → ``new`` is drawn."""
        if not self.allows(old, new):
            raise IllegalTransition(f"{self.entity} may not go from {old} to {new}")

    def successors(self, old: S) -> frozenset[S]:
        """The statuses a row in ``old`` may move to."""
        return self._moves[old]

    def predecessors(self, new: S) -> frozenset[S]:
        """The statuses a row may reach ``new`` from (for a ``WHERE status = ANY(...)`` guard)."""
        return frozenset(state for state, after in self._moves.items() if new in after)

    @property
    def final(self) -> frozenset[S]:
        """Statuses nothing follows."""
        return frozenset(state for state, after in self._moves.items() if not after)

    def __iter__(self) -> Iterator[tuple[S | None, S]]:
        """Every allowed transition, creation first (``(None, initial)``), in enum order."""
        yield None, self.initial
        for state in self._enum:
            for after in self._enum:
                if after in self._moves[state]:
                    yield state, after

    def drawing(self) -> str:
        """The table as a bulleted list, one line per status, for the enum's docstring."""
        lines = [f"* (new) → {self.initial}"]
        for state in self._enum:
            after = [str(s) for s in self._enum if s in self._moves[state]]
            lines.append(f"* {state} → {', '.join(after) if after else '(final)'}")
        return "\n".join(lines)

    def _member(self, value: S | str) -> S | None:
        try:
            return self._enum(value)
        except ValueError:
            return None
