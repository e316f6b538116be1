"""The on-call policy: which channels hear about which alerts, grouping, escalation, inhibition.

It lives in a YAML file (``SWITCHBOARD_ALERTING_POLICY``, default ``core/alerting.yaml``,
shipped with the package, documented there) and is validated when a process starts and by
``switchboard alerts check-config``; a mistake is refused with the line it is on.

Shape (durations are ``30s``, ``10m``, ``4h``; matchers compare an alert's labels, ``*`` at the
end of a value matches any suffix)::

    routes:                      # the first route whose matchers all match takes the alert
      - name: critical
        match: {severity: critical}
        group_by: [kind]         # one escalation per distinct value of these labels
        group_wait: 0s           # collect the group's first alerts this long before notifying
        repeat_interval: 30m     # re-post a summary of new occurrences into the Slack thread
        escalation:              # each step waits for an acknowledgement, then notifies
          - {after: 0s, notify: [slack]}
          - {after: 10m, notify: [pagerduty]}
        repeat: {every: 30m, times: 3}   # then re-page the last step's channels
    inhibit:                     # an open source alert mutes matching targets
      - source: {kind: gateway_redis_unreachable}
        target: {kind: "gateway_*"}
        equal: []

Labels of an alert: ``kind``, ``severity`` and the string values of its details
(``partner_id``, ``merchant_id``, ``endpoint_id``, ``event_id``…).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from core.alerting import KINDS, AlertKind

__all__ = [
    "Channel",
    "EscalationStep",
    "InhibitRule",
    "PolicyError",
    "Route",
    "RoutingPolicy",
    "declared_kinds",
    "labels_of",
    "load_policy",
    "matches",
]

# The modules that declare alert kinds (each next to the code that detects them); imported
# before a policy is checked so that every kind it may name is known.
DETECTORS = (
    "activities.ledger",
    "activities.escrow",
    "activities.deliveries",
    "activities.endpoint_health",
    "activities.exchange",
    "activities.monitor",
    "gateway.server",
)

Channel = Literal["slack", "pagerduty"]
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        found = _DURATION.match(value.strip())
        if not found:
            raise ValueError(f"{value!r} is not a duration such as 30s, 10m or 4h")
        return timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])
    if isinstance(value, int) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return value


def _known_kinds(matchers: dict[str, str]) -> dict[str, str]:
    kind = matchers.get("kind")
    if kind and not kind.endswith("*"):
        _import_detectors()
        if kind not in KINDS:
            known = ", ".join(sorted(KINDS))
            raise ValueError(f"no alert kind {kind!r} is declared (known: {known})")
    return matchers


Duration = Annotated[timedelta, BeforeValidator(_duration)]
Matchers = Annotated[dict[Annotated[str, Field(min_length=1)], str], AfterValidator(_known_kinds)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EscalationStep(_Strict):
    """Notify ``notify`` once ``after`` has passed without an acknowledgement."""

    after: Duration = timedelta(0)
    notify: Annotated[list[Channel], Field(min_length=1)]


class Repeat(_Strict):
    every: Duration
    times: Annotated[int, Field(ge=0, le=100)]


class Route(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    match: Matchers = Field(default_factory=dict)
    group_by: list[str] = Field(default_factory=lambda: ["kind"])
    group_wait: Duration = timedelta(0)
    repeat_interval: Duration = timedelta(hours=4)
    escalation: Annotated[list[EscalationStep], Field(min_length=1)]
    repeat: Repeat | None = None

    @model_validator(mode="after")
    def _steps_in_order(self) -> Route:
        afters = [step.after for step in self.escalation]
        if afters != sorted(afters):
            raise ValueError("escalation steps must be in the order of their 'after'")
        return self


class InhibitRule(_Strict):
    source: Matchers
    target: Matchers
    equal: list[str] = Field(default_factory=list)


class RoutingPolicy(_Strict):
    routes: Annotated[list[Route], Field(min_length=1)]
    inhibit: list[InhibitRule] = Field(default_factory=list)

    @field_validator("routes")
    @classmethod
    def _unique_names_and_a_fallback(cls, routes: list[Route]) -> list[Route]:
        names = [route.name for route in routes]
        if len(set(names)) != len(names):
            raise ValueError("route names must be unique")
        if routes and routes[-1].match:
            raise ValueError("the last route must match everything (no 'match'): the fallback")
        return routes

    def route_for(self, labels: Mapping[str, str]) -> Route:
        """The first route whose matchers all match (the last one matches everything)."""
        return next(route for route in self.routes if matches(route.match, labels))

    def group_key(self, route: Route, labels: Mapping[str, str]) -> str:
        """Alerts with the same key share one escalation (Alertmanager's ``group_by``)."""
        values = ",".join(f"{label}={labels.get(label, '')}" for label in route.group_by)
        return f"{route.name}|{values}"


class PolicyError(ValueError):
    """The policy file is invalid; the message names the file and line."""


def matches(matchers: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether every matcher equals the label (a trailing ``*`` matches any suffix)."""
    for label, wanted in matchers.items():
        value = labels.get(label)
        if value is None:
            return False
        if wanted.endswith("*") and value.startswith(wanted[:-1]):
            continue
        if value != wanted:
            return False
    return True


def labels_of(kind: str, severity: str, details: Mapping[str, Any]) -> dict[str, str]:
    """An alert's labels: its kind, severity and the string values of its details."""
    labels = {key: value for key, value in details.items() if isinstance(value, str)}
    labels.update(kind=kind, severity=severity)
    return labels


def load_policy(path: Path) -> RoutingPolicy:
    """Read and validate the policy file; :class:`PolicyError` names the line of a mistake."""
    try:
        text = path.read_text()
    except OSError as error:
        raise PolicyError(f"{path}: cannot read the alerting policy: {error}") from None
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise PolicyError(f"{path}{line}: not valid YAML: {error}") from None
    if node is None:
        raise PolicyError(f"{path}:1: the alerting policy is empty")
    lines: dict[tuple[str | int, ...], int] = {}
    data = _plain(node, (), lines)
    try:
        return RoutingPolicy.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        location = tuple(first["loc"])
        where = ".".join(str(part) for part in location) or "policy"
        line_number = _nearest_line(location, lines)
        raise PolicyError(f"{path}:{line_number}: {where}: {first['msg']}") from None


def _plain(node: yaml.Node, path: tuple[str | int, ...], lines: dict[Any, int]) -> Any:
    """Turn a composed YAML node into plain data, noting the line of every path."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            result[key] = _plain(value_node, (*path, key), lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, (*path, n), lines) for n, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _nearest_line(location: tuple[Any, ...], lines: Mapping[tuple[Any, ...], int]) -> int:
    for end in range(len(location), -1, -1):
        if (line := lines.get(location[:end])) is not None:
            return line
    return 1


def declared_kinds() -> Mapping[str, AlertKind]:
    """Every alert kind, once the modules that declare them are imported."""
    _import_detectors()
    return KINDS


def _import_detectors() -> None:
    for module in DETECTORS:
        importlib.import_module(module)
