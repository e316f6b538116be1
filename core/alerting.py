"""Alert kinds: what on-call can be told about, declared beside the code that detects it.

A module that raises an alert declares its kind at import time with :func:`alert_kind` (name,
default severity, what it means), then records occurrences with :func:`core.audit.raise_alert`.
The routing policy (``core/alerting.yaml``, :mod:`core.alert_policy`) decides who hears about each
kind and how it escalates; a policy naming a kind nobody declared is refused at start.

Severities are PagerDuty's, so they travel to it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["KINDS", "AlertKind", "Severity", "alert_kind"]


class Severity(StrEnum):
    """How bad an alert is (PagerDuty Events v2 severities), most severe first."""

    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class AlertKind:
    """One kind of alert: its stable name, default severity and a line for on-call."""

    name: str
    severity: Severity
    meaning: str


KINDS: dict[str, AlertKind] = {}
"""Every declared kind by name (filled as the modules that detect them are imported)."""


def alert_kind(name: str, severity: Severity, meaning: str) -> AlertKind:
    """Declare an alert kind (once per name; declaring the same kind again returns it)."""
    kind = AlertKind(name, severity, meaning)
    declared = KINDS.setdefault(name, kind)
    if declared != kind:
        raise ValueError(f"alert kind {name!r} is declared twice, differently")
    return declared
